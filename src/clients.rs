//! clients (server helper).
