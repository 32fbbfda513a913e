//! The files of `static_dir`: the room page (`/`, `/app.js`, `/app.css`) and the signaling
//! module, `/signpost.js`, which other applications' pages import (docs/API.md, "The browser
//! client's URL"). Every file is also served under `/static/`, the path people try first.
//!
//! Instead of Rocket's `FileServer`, which says nothing about caching or CORS, each answer
//! carries:
//! - `ETag`, a digest of the content, and `Cache-Control: no-cache`: a browser or a proxy may
//!   keep the file but asks each time whether it changed (a `304` with no body when it has not),
//!   so a deployment's new `signpost.js` is what the next page load runs, on every instance;
//! - `Access-Control-Allow-Origin: *`: a module script imported by a page of another origin is
//!   fetched in CORS mode. The files are public and no cookie or token goes with them, so any
//!   origin may read them; who may call `/api` is still `cors_allowed_origins`'s decision.

use std::path::{Path, PathBuf};

use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};
use rocket::State;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// What a directory's URL serves.
const INDEX: &str = "index.html";

/// A file of `static_dir` under `/`, or the index page for `/`.
#[get("/<path..>", rank = 20)]
pub async fn file(
    path: PathBuf,
    config: &State<Config>,
    validators: IfNoneMatch,
) -> Option<StaticFile> {
    StaticFile::read(Path::new(&config.static_dir), &path, &validators).await
}

/// The same file under `/static/`. Ranked before [`file`], which also matches these paths, so
/// that `/static/signpost.js` is `static_dir/signpost.js`.
#[get("/static/<path..>", rank = 19)]
pub async fn file_under_static(
    path: PathBuf,
    config: &State<Config>,
    validators: IfNoneMatch,
) -> Option<StaticFile> {
    StaticFile::read(Path::new(&config.static_dir), &path, &validators).await
}

/// The `If-None-Match` header of the request, if any: the ETags of the copies the client holds.
pub struct IfNoneMatch(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for IfNoneMatch {
    type Error = std::convert::Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let header = request.headers().get_one("If-None-Match");
        Outcome::Success(IfNoneMatch(header.map(str::to_owned)))
    }
}

impl IfNoneMatch {
    /// Whether the client's copy is `etag` (RFC 9110 §13.1.2: `*`, or any tag of the list,
    /// compared weakly).
    fn matches(&self, etag: &str) -> bool {
        let Some(header) = &self.0 else {
            return false;
        };
        header
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    }
}

/// A file of `static_dir`, or the news that the client's copy is current.
pub struct StaticFile {
    /// The file's [`etag_of`].
    etag: String,
    /// The file and its type; `None` for a `304`: the client's copy is this one.
    content: Option<(Vec<u8>, ContentType)>,
}

impl StaticFile {
    /// `relative` (already free of `..` and dot-files: Rocket's `PathBuf` guard) under `root`,
    /// with a directory standing for its `index.html`; `None` (a 404) when there is no such file.
    async fn read(root: &Path, relative: &Path, validators: &IfNoneMatch) -> Option<StaticFile> {
        let mut path = root.join(relative);
        if tokio::fs::metadata(&path).await.ok()?.is_dir() {
            path.push(INDEX);
        }
        let body = tokio::fs::read(&path).await.ok()?;
        let etag = etag_of(&body);
        if validators.matches(&etag) {
            return Some(StaticFile {
                etag,
                content: None,
            });
        }
        let content_type = path
            .extension()
            .and_then(|extension| extension.to_str())
            .and_then(ContentType::from_extension)
            .unwrap_or(ContentType::Binary);
        Some(StaticFile {
            etag,
            content: Some((body, content_type)),
        })
    }
}

/// A strong ETag for `content`: the first 128 bits of its SHA-256, so that every instance of a
/// deployment gives the same file the same tag, whatever its modification time there.
fn etag_of(content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

impl<'r> Responder<'r, 'static> for StaticFile {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut response = Response::build();
        match self.content {
            Some((body, content_type)) => {
                response
                    .header(content_type)
                    .sized_body(body.len(), std::io::Cursor::new(body));
            }
            None => {
                response.status(Status::NotModified);
            }
        }
        response
            .header(Header::new("ETag", self.etag))
            .header(Header::new("Cache-Control", "no-cache"))
            .header(Header::new("Access-Control-Allow-Origin", "*"))
            .ok()
    }
}
