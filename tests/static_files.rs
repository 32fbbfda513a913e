//! The browser client's files as a contract (docs/API.md, "The browser client's URL"):
//! `/signpost.js` and the page are served from `static_dir`, the same under `/static/`, with an
//! ETag and `Cache-Control: no-cache` so that a deployment's update is seen at the next load, and
//! readable from any origin, as a module script imported by another site's page must be.
//!
//! The import itself, from a page of another origin in Chromium, is in tests/browser.rs.

mod common;

use common::Server;
use serde_json::json;

const SIGNPOST_JS: &str = include_str!("../static/signpost.js");

/// `GET /signpost.js` answers the repository's module, as JavaScript, with an ETag, revalidated
/// on every use, and readable cross-origin; `/static/signpost.js` answers the same.
#[tokio::test]
async fn the_module_is_served_at_its_documented_paths() {
    let server = Server::start().await;
    let mut etags = Vec::new();
    for path in ["/signpost.js", "/static/signpost.js"] {
        let response = server
            .client
            .get(server.url(path))
            .header("Origin", "https://app.example.org")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/javascript", "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{path}");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{path}: a strong ETag, not {etag}"
        );
        assert_eq!(response.text().await.unwrap(), SIGNPOST_JS, "{path}");
        etags.push(etag);
    }
    assert_eq!(etags[0], etags[1], "one file, one ETag");
    server.stop().await;
}

/// A client that holds the current copy gets `304` with no body; once the file changes (a
/// deployment), the same request gets `200` with the new content and a new ETag.
#[tokio::test]
async fn a_changed_file_is_seen_at_the_next_revalidation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("signpost.js"),
        "export const version = 1;\n",
    )
    .unwrap();
    let server = Server::with(json!({"static_dir": dir.path()})).await;
    let get = |etag: Option<String>| {
        let mut request = server.client.get(server.url("/signpost.js"));
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        request.send()
    };
    let first = get(None).await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let unchanged = get(Some(etag.clone())).await.unwrap();
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    assert_eq!(unchanged.headers()["cache-control"], "no-cache");
    assert_eq!(unchanged.headers()["access-control-allow-origin"], "*");
    assert_eq!(unchanged.bytes().await.unwrap().len(), 0);
    let weak = get(Some(format!("\"other\", W/{etag}"))).await.unwrap();
    assert_eq!(weak.status(), 304, "any tag of the list, compared weakly");

    std::fs::write(
        dir.path().join("signpost.js"),
        "export const version = 2;\n",
    )
    .unwrap();
    let changed = get(Some(etag.clone())).await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"], etag.as_str());
    assert_eq!(changed.text().await.unwrap(), "export const version = 2;\n");
    server.stop().await;
}

/// The room page is `/` and `/static/`, and its script is at both `/app.js` and `/static/app.js`
/// (the page and its module load each other by relative URLs, so either prefix works).
#[tokio::test]
async fn the_page_is_served_at_the_root_and_under_static() {
    let server = Server::start().await;
    for (path, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/static/", "index.html", "text/html; charset=utf-8"),
        ("/app.js", "app.js", "text/javascript"),
        ("/static/app.js", "app.js", "text/javascript"),
        ("/static/app.css", "app.css", "text/css; charset=utf-8"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        let expected = std::fs::read_to_string(format!("static/{file}")).unwrap();
        assert_eq!(response.text().await.unwrap(), expected, "{path}");
    }
    server.stop().await;
}

/// Every module of the page under `static/app/` is served, under either prefix, as JavaScript
/// (a browser refuses a module script of any other type), and every module the page imports is
/// one of them: the page needs no file the server does not serve.
#[tokio::test]
async fn the_page_modules_are_served_as_javascript() {
    let server = Server::start().await;
    let mut modules: Vec<String> = std::fs::read_dir("static/app")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".js"))
        .collect();
    modules.sort();
    assert!(
        !modules.is_empty(),
        "the page has modules under static/app/"
    );
    for module in &modules {
        let expected = std::fs::read_to_string(format!("static/app/{module}")).unwrap();
        for path in [format!("/app/{module}"), format!("/static/app/{module}")] {
            let response = server.client.get(server.url(&path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert_eq!(
                response.headers()["content-type"],
                "text/javascript",
                "{path}"
            );
            assert_eq!(response.text().await.unwrap(), expected, "{path}");
        }
    }
    // Each module's imports, resolved against its own URL as the browser does.
    let pages = modules
        .iter()
        .map(|module| format!("/app/{module}"))
        .chain(["/app.js".to_owned()]);
    for page in pages {
        let source = std::fs::read_to_string(format!("static{page}")).unwrap();
        let imports = source
            .lines()
            .filter(|line| line.starts_with("import "))
            .filter_map(|line| line.split('"').nth(1));
        for import in imports {
            let mut path: Vec<&str> = page.split('/').collect();
            path.pop();
            for segment in import.split('/') {
                match segment {
                    "." => {}
                    ".." => {
                        path.pop();
                    }
                    _ => path.push(segment),
                }
            }
            let url = path.join("/");
            let response = server.client.get(server.url(&url)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{page} imports {import} ({url})");
            assert_eq!(
                response.headers()["content-type"],
                "text/javascript",
                "{url}"
            );
        }
    }
    server.stop().await;
}

/// What is not a file of `static_dir` is the API's JSON 404 under either prefix, and neither a
/// dot-file in it nor a file beside it is served, however the path is spelt.
#[tokio::test]
async fn only_the_files_of_static_dir_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::write(public.join("signpost.js"), "export {};\n").unwrap();
    std::fs::write(public.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "SECRET=2\n").unwrap();
    let server = Server::with(json!({"static_dir": public})).await;
    for path in ["/signpost.js", "/static/signpost.js"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in [
        "/nothing.js",
        "/static/nothing.js",
        "/.env",
        "/static/.env",
        "/%2eenv",
        "/..%2fsecret.txt",
        "/static/..%2fsecret.txt",
        "/public/..%2f..%2fsecret.txt",
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    server.stop().await;
}
