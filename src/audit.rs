//! audit (server helper).
