//! tokens (resolver helper).
