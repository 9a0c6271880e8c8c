//! The two core/v1 resources the stand-in serves.

/// A resource type served by the stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Namespace,
    Pod,
}

impl Resource {
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Namespace => "Namespace",
            Resource::Pod => "Pod",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Namespace => "namespaces",
            Resource::Pod => "pods",
        }
    }

    pub fn namespaced(self) -> bool {
        self == Resource::Pod
    }

    pub(crate) fn list_kind(self) -> &'static str {
        match self {
            Resource::Namespace => "NamespaceList",
            Resource::Pod => "PodList",
        }
    }

    pub(crate) fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Namespace" => Some(Resource::Namespace),
            "Pod" => Some(Resource::Pod),
            _ => None,
        }
    }

    pub(crate) fn from_plural(plural: &str) -> Option<Self> {
        match plural {
            "namespaces" => Some(Resource::Namespace),
            "pods" => Some(Resource::Pod),
            _ => None,
        }
    }

    /// Field labels the real API server accepts in `fieldSelector` (it rejects any other).
    pub(crate) fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Namespace => &["metadata.name", "status.phase"],
            Resource::Pod => &[
                "metadata.name",
                "metadata.namespace",
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
        }
    }
}
