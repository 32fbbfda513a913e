//! The signpost server binary: everything is in the library, so tests run the same server.

use std::process::ExitCode;

#[rocket::main]
async fn main() -> ExitCode {
    match signpost::rocket().launch().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            // Rocket's own log is off (it would print tokens), so report launch failures here.
            eprintln!("signpost: could not start: {error}");
            ExitCode::FAILURE
        }
    }
}
