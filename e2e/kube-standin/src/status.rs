//! API errors, rendered as the `kind: Status` objects clients decode.

use serde_json::{json, Value};

use crate::resource::Resource;

/// A failed API call: the HTTP code and `reason` the real server would answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Option<(Resource, String)>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, resource: Resource, name: &str) -> Self {
        self.details = Some((resource, name.to_string()));
        self
    }

    pub(crate) fn not_found(resource: Resource, name: &str) -> Self {
        let msg = format!("{} \"{name}\" not found", resource.plural());
        Self::new(404, "NotFound", msg).about(resource, name)
    }

    pub(crate) fn already_exists(resource: Resource, name: &str) -> Self {
        let msg = format!("{} \"{name}\" already exists", resource.plural());
        Self::new(409, "AlreadyExists", msg).about(resource, name)
    }

    pub(crate) fn conflict(resource: Resource, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            resource.plural()
        );
        Self::new(409, "Conflict", msg).about(resource, name)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn invalid(resource: Resource, name: &str, message: impl Into<String>) -> Self {
        let msg = format!(
            "{} \"{name}\" is invalid: {}",
            resource.kind(),
            message.into()
        );
        Self::new(422, "Invalid", msg).about(resource, name)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((resource, name)) = &self.details {
            status["details"] = json!({"name": name, "kind": resource.plural()});
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
