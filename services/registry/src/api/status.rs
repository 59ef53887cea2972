//! One mapping from the registry's typed errors to gRPC statuses, with rich details.

use crate::policy::PolicyError;
use crate::store::StoreError;
use crate::subscriptions::SubscriptionError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::InvalidSchema(_) | StoreError::InvalidSubject(_) => Status::invalid_argument(message),
            StoreError::TooLarge { .. } => Status::resource_exhausted(message),
            StoreError::NotFound(_) => Status::not_found(message),
            StoreError::Incompatible { problems, .. } => {
                let mut details = ErrorDetails::new();
                for p in &problems {
                    details.add_bad_request_violation(p.pointer.clone(), p.message.clone());
                }
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            StoreError::Referenced { .. } | StoreError::Precondition(_) => {
                Status::failed_precondition(message)
            }
            StoreError::Contention(_) => Status::aborted(message),
            StoreError::Storage(_) => Status::unavailable(message),
        }
    }
}

impl From<SubscriptionError> for Status {
    fn from(e: SubscriptionError) -> Self {
        let message = e.to_string();
        match e {
            SubscriptionError::Invalid(_) => Status::invalid_argument(message),
            SubscriptionError::NotPermitted { .. } => Status::permission_denied(message),
            SubscriptionError::Conflict(_) => Status::already_exists(message),
            SubscriptionError::NotFound(_) => Status::not_found(message),
            SubscriptionError::Storage(_) => Status::unavailable(message),
        }
    }
}

impl From<PolicyError> for Status {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(_) => Status::invalid_argument(e.to_string()),
            PolicyError::Storage(_) => Status::unavailable(e.to_string()),
        }
    }
}
