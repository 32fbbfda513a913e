//! The signpost server binary: everything is in the library, so tests run the same server.
//! `signpost token …` mints a join token instead of serving (`signpost::token_command`).

use std::io::Write;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: on the relay benchmark glibc's malloc and free took
/// about a sixth of the server's time, and after thousands of streams closed glibc kept their
/// memory while mimalloc returns it (docs/BENCHMARKS.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|first| first == "token") {
        let figment = rocket::Config::figment();
        return match signpost::token_command::run(args.skip(1), &figment) {
            Ok(token) => {
                let _ = writeln!(std::io::stdout(), "{token}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("signpost token: {error}");
                ExitCode::FAILURE
            }
        };
    }
    rocket::execute(serve())
}

async fn serve() -> ExitCode {
    let figment = rocket::Config::figment();
    // The log is set up before the server, from the same settings; settings that do not parse
    // get the default log, and the server then refuses to start and says why in it.
    let config = figment
        .focus("signpost")
        .extract::<signpost::config::Config>()
        .ok()
        .filter(|config| config.validate().is_ok())
        .unwrap_or_default();
    signpost::logging::install(&config);
    let signals = signpost::shutdown_signals(&figment);
    match signpost::Server::bind(figment).await {
        Ok(server) => {
            server.run(signals).await;
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(target: "signpost", "could not start: {error}");
            ExitCode::FAILURE
        }
    }
}
