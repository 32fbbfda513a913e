//! Reading a raw HTTP response body until some text has come, for the tests of the bytes on the
//! wire (SSE framing, heartbeats). A child process's output is read the same way, line by line,
//! with `process::ChildProcess::read_until`.

use super::EVENT_DEADLINE;

/// Reads `response`'s body until what this call read contains `needle`, and returns all of it
/// (later calls go on from there). Guarantees `needle` is in the returned text; fails the test,
/// showing what did come, if it has not within [`EVENT_DEADLINE`] or the body ends first.
pub async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    let read = async {
        while !text.contains(needle) {
            match response.chunk().await {
                Ok(Some(chunk)) => text.push_str(std::str::from_utf8(&chunk).expect("UTF-8")),
                Ok(None) => return Err("the body ended"),
                Err(_) => return Err("the body broke off"),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(EVENT_DEADLINE, read).await {
        Ok(Ok(())) => text,
        Ok(Err(ended)) => panic!("{ended} before {needle:?} came; got {text:?}"),
        Err(_) => panic!("{needle:?} never came within {EVENT_DEADLINE:?}; got {text:?}"),
    }
}
