//! app (resolver helper).
