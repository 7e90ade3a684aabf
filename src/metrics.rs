//! metrics (server helper).
