//! error (server helper).
