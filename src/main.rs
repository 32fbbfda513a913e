//! The signpost server binary: everything is in the library, so tests run the same server.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: on the relay benchmark glibc's malloc and free took
/// about a sixth of the server's time, and after thousands of streams closed glibc kept their
/// memory while mimalloc returns it (docs/BENCHMARKS.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[rocket::main]
async fn main() -> ExitCode {
    let figment = rocket::Config::figment();
    let signals = signpost::shutdown_signals(&figment);
    match signpost::Server::bind(figment).await {
        Ok(server) => {
            server.run(signals).await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            // Rocket's own log is off (it would print tokens), so report start-up failures here.
            eprintln!("signpost: could not start: {error}");
            ExitCode::FAILURE
        }
    }
}
