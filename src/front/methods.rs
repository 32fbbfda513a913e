//! Which methods each path of the server answers, so that a known path asked with another
//! method gets `405 Method Not Allowed` with `Allow` (RFC 9110 §15.5.6) instead of the `404` of a
//! path that does not exist.
//!
//! The table is every route the server mounts: Rocket's (read from the ignited application, so a
//! route added there is covered without touching this file) and the front's three relay routes.
//! Catch-all routes (`/<path..>`: the static files, the CORS preflight) answer any path, so
//! they name no path of their own and are left out. The same table is what
//! [`Server::endpoints`](crate::Server::endpoints) lists for the test that holds
//! `docs/openapi.yaml` to the server.

use hyper::Method;
use rocket::{Orbit, Rocket};

use crate::relay_routes::RelayRoute;

/// One route: a method and a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The method, upper case (`GET`).
    pub method: String,
    /// The path in OpenAPI's spelling: `/api/rooms/{room}/peers/{peer}`.
    pub path: String,
    /// Whether the layer that serves it answers `HEAD` too: Rocket answers `HEAD` with its `GET`
    /// routes; the front does not, since a `HEAD` on the stream or the poll would open a stream
    /// or acknowledge messages that nobody reads.
    answers_head: bool,
    /// The template's segments; `None` stands for a parameter, which matches any non-empty
    /// segment, as Rocket's dynamic segments do.
    segments: Vec<Option<String>>,
}

impl Endpoint {
    fn new(method: &str, template: &str, answers_head: bool) -> Option<Endpoint> {
        let mut segments = Vec::new();
        let mut path = String::new();
        for segment in template.split('/').skip(1) {
            if let Some(name) = segment.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
                if name.ends_with("..") {
                    // A catch-all: it names no path.
                    return None;
                }
                segments.push(None);
                path.push_str(&format!("/{{{name}}}"));
            } else {
                segments.push(Some(segment.to_owned()));
                path.push('/');
                path.push_str(segment);
            }
        }
        Some(Endpoint {
            method: method.to_owned(),
            path,
            answers_head,
            segments,
        })
    }

    fn matches(&self, path: &str) -> bool {
        let mut given = path.split('/').skip(1);
        for segment in &self.segments {
            match (segment, given.next()) {
                (_, None | Some("")) => return false,
                (Some(fixed), Some(actual)) if fixed != actual => return false,
                _ => {}
            }
        }
        given.next().is_none()
    }
}

/// Every route the server mounts, by path.
pub struct Methods {
    endpoints: Vec<Endpoint>,
}

impl Methods {
    /// The routes of `rocket` and of the front.
    pub fn of(rocket: &Rocket<Orbit>) -> Methods {
        let rocket_routes = rocket.routes().filter_map(|route| {
            let method = route.method.as_str();
            Endpoint::new(method, route.uri.path(), method == "GET")
        });
        let relay_routes = RelayRoute::ALL
            .into_iter()
            .filter_map(|route| Endpoint::new(route.method(), &route.template(), false));
        let mut endpoints: Vec<Endpoint> = rocket_routes.chain(relay_routes).collect();
        endpoints.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
        endpoints.dedup_by(|a, b| a.path == b.path && a.method == b.method);
        Methods { endpoints }
    }

    /// Every route, sorted by path then method.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// When `path` is a route's but `method` is none of its methods: the `Allow` header's value.
    /// `None` when the method is allowed or no route has this path (a 404 then, Rocket's).
    pub fn refusal(&self, method: &Method, path: &str) -> Option<String> {
        let mut allowed: Vec<&str> = Vec::new();
        for endpoint in self.endpoints.iter().filter(|e| e.matches(path)) {
            allowed.push(&endpoint.method);
            if endpoint.answers_head {
                allowed.push("HEAD");
            }
        }
        if allowed.is_empty() {
            return None;
        }
        // Every `/api` path answers `OPTIONS` (the CORS preflight, `api::cors`).
        if path.starts_with("/api/") {
            allowed.push("OPTIONS");
        }
        if allowed.contains(&method.as_str()) {
            return None;
        }
        allowed.sort_unstable();
        allowed.dedup();
        Some(allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Methods {
        let endpoints = [
            ("GET", "/api/rooms/<room>", true),
            ("POST", "/api/rooms/<room>/peers", true),
            ("GET", "/api/rooms/<room>/peers/<peer>/events", false),
            ("GET", "/<path..>", true),
            ("GET", "/healthz", true),
        ];
        Methods {
            endpoints: endpoints
                .iter()
                .filter_map(|(method, path, head)| Endpoint::new(method, path, *head))
                .collect(),
        }
    }

    /// A known path with another method is refused with the methods it answers; an unknown
    /// path, an empty parameter or an allowed method is not refused here.
    #[test]
    fn known_paths_refuse_other_methods() {
        let methods = table();
        assert_eq!(
            methods.refusal(&Method::PUT, "/api/rooms/demo").as_deref(),
            Some("GET, HEAD, OPTIONS")
        );
        assert_eq!(
            methods
                .refusal(&Method::HEAD, "/api/rooms/demo/peers/x/events")
                .as_deref(),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            methods.refusal(&Method::POST, "/healthz").as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(methods.refusal(&Method::HEAD, "/api/rooms/demo"), None);
        assert_eq!(methods.refusal(&Method::OPTIONS, "/api/rooms/demo"), None);
        assert_eq!(methods.refusal(&Method::PUT, "/api/rooms//peers"), None);
        assert_eq!(methods.refusal(&Method::PUT, "/api/rooms/a/b"), None);
        assert_eq!(methods.refusal(&Method::PUT, "/index.html"), None);
        assert_eq!(
            methods.endpoints()[0].path,
            "/api/rooms/{room}",
            "catch-alls name no path"
        );
    }
}
