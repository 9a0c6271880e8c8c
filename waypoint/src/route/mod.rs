//! Routing: the model the Kubernetes route objects become, the precedence-ordered table a
//! request is matched against, and the filters applied to a matched request.

pub mod filters;
pub mod model;
pub mod select;

pub use model::*;
pub use select::{Entry, Overlay, RequestView, RouteTable, Selected};

#[cfg(test)]
mod tests;
