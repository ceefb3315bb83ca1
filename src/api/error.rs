//! Every error the API returns: one type, one place that maps it to an HTTP status and a
//! stable machine-readable `code`. Bodies are always `{"code", "message", ...details}`.

use crate::actors::ServiceError;
use crate::domain::ids::IdError;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid_id(field: &str, e: IdError) -> Self {
        let why = match e {
            IdError::Empty => "must not be empty",
            IdError::TooLong => "must be at most 128 bytes",
            IdError::BadChar => "may contain only A-Z a-z 0-9 . _ : -",
        };
        Self::bad_request("invalid_id", format!("{field} {why}")).with("field", field)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn body(&self) -> Value {
        self.clone().into_body()
    }

    /// The JSON body, built from the error itself (no copy of its details).
    fn into_body(self) -> Value {
        let mut body = self.details;
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), Value::String(self.message));
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = (status, Json(self.into_body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let unavailable = |code, msg: String| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, msg).with("retry_after_ms", 100)
        };
        match e {
            ServiceError::Overloaded => unavailable("overloaded", e.to_string()),
            ServiceError::Unavailable => unavailable("key_unavailable", e.to_string()),
            ServiceError::Timeout(_) => unavailable("timeout", e.to_string()),
            ServiceError::OutcomeUnknown { .. } => unavailable("outcome_unknown", e.to_string()),
            ServiceError::ShuttingDown => unavailable("shutting_down", e.to_string()),
            ServiceError::VnodeUnavailable { retry_after_ms, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vnode_unavailable",
                e.to_string(),
            )
            .with("retry_after_ms", retry_after_ms),
            ServiceError::Internal(_) => {
                tracing::error!(error = %e, "cluster error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            ServiceError::Storage(s) => {
                tracing::error!(error = %s, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    s.to_string(),
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::bad_request("malformed_json", e.body_text())
            }
            JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected content-type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    e.body_text(),
                )
            }
            other => ApiError::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", r.body_text())
    }
}
