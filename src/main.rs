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
