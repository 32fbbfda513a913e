//! `signpost token`: mints a join token with a key of `join_keys`, as an application's backend
//! would, for operators trying a `required` room and for tests. The binary only hands it its
//! arguments and the configuration; the signing is [`JoinTokens::mint`].
//!
//! ```text
//! signpost token --room demo --name Alice --ttl 5m [--meta '{"role":"host"}'] [--sub user-42] [--kid 2025-06]
//! ```

use std::ffi::OsString;
use std::time::Duration;

use rocket::figment::Figment;

use crate::config::Config;
use crate::join_token::{JoinTokens, MintRequest};

/// The usage text, printed with `--help` and after an error in the arguments.
pub const USAGE: &str = "usage: signpost token --room ROOM [--name NAME] [--meta JSON] [--sub SUBJECT] [--ttl 30s|5m|2h] [--kid KEY_ID]
  Prints a join token signed with a key of signpost.join_keys (Rocket.toml or ROCKET_SIGNPOST).
  --ttl defaults to 5m; --kid may be left out when there is a single key.";

/// The token for `args` (those after `token`), signed with the keys of `figment`'s `signpost`
/// table; or a message for stderr.
pub fn run(args: impl IntoIterator<Item = OsString>, figment: &Figment) -> Result<String, String> {
    let request = parse_args(args)?;
    let config: Config = figment
        .focus("signpost")
        .extract()
        .map_err(|error| format!("invalid configuration: {error}"))?;
    config
        .validate()
        .map_err(|error| format!("invalid configuration: {error}"))?;
    JoinTokens::new(&config)?.mint(&request)
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<MintRequest, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut request = MintRequest {
        ttl: Duration::from_secs(300),
        ..MintRequest::default()
    };
    let mut room = None;
    let text = |parser: &mut lexopt::Parser, option: &str| -> Result<String, String> {
        parser
            .value()
            .map_err(|error| error.to_string())?
            .into_string()
            .map_err(|_| format!("{option} is not valid UTF-8"))
    };
    while let Some(arg) = parser.next().map_err(|error| error.to_string())? {
        match arg {
            Long("room") => room = Some(text(&mut parser, "--room")?),
            Long("name") => request.name = Some(text(&mut parser, "--name")?),
            Long("sub") => request.sub = Some(text(&mut parser, "--sub")?),
            Long("kid") => request.kid = Some(text(&mut parser, "--kid")?),
            Long("meta") => {
                let meta = text(&mut parser, "--meta")?;
                request.meta = Some(
                    serde_json::from_str(&meta)
                        .map_err(|error| format!("--meta is not JSON: {error}"))?,
                );
            }
            Long("ttl") => request.ttl = parse_ttl(&text(&mut parser, "--ttl")?)?,
            Long("help") | Short('h') => return Err(USAGE.into()),
            other => return Err(format!("{}\n{USAGE}", other.unexpected())),
        }
    }
    request.room = room.ok_or_else(|| format!("--room is required\n{USAGE}"))?;
    Ok(request)
}

/// `30s`, `5m`, `2h`, `1d`, or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(number) if number > 0 && seconds_per_unit > 0 => number
            .checked_mul(seconds_per_unit)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("--ttl {text} is too long")),
        _ => Err(format!(
            "--ttl {text:?} is not a positive duration such as 30s, 5m or 2h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_as_people_write_them() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "0s", "5x", "m", "-5s", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
