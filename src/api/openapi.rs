//! `GET /api/openapi.yaml`: the OpenAPI description of the API (`docs/openapi.yaml`), built into
//! the binary so that the document a client fetches is the one this server was built with.

use rocket::http::ContentType;

/// The document, as written in the repository.
const DOCUMENT: &str = include_str!("../../docs/openapi.yaml");

#[get("/openapi.yaml")]
pub fn openapi() -> (ContentType, &'static str) {
    (ContentType::new("application", "yaml"), DOCUMENT)
}
