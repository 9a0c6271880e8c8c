//! (module under construction)
mod proto;
