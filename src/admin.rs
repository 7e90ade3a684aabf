//! admin (server helper).
