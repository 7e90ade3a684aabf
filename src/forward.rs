//! forward (server helper).
