//! installations (resolver helper).
