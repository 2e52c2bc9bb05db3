//! `usher serve`'s configuration file, layered under the environment and the flags.
//!
//! The file is TOML whose keys are the `serve` flags' long names (`https-addr`, `hostname`, …). It
//! is read through clap itself: each key the file sets becomes that flag's default value, so the
//! precedence is clap's own (flag > environment > default) with the file in the default's place,
//! and every value goes through the same parser as the flag. A flag added to `ServeArgs` is a key
//! at once; no second list of settings exists to keep in step.
//!
//! `--print-config` renders the settings in force (with where each came from) as a file that can
//! be read back.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory as _, FromArgMatches as _};

use crate::cli::{Cli, Command};

/// `serve` flags that are not settings, so not keys.
const NOT_KEYS: &[&str] = &["config", "print-config", "help"];

/// Parses the command line; for `usher serve --config FILE` (or `USHER_CONFIG`), with the file's
/// settings under the environment and the flags.
pub(crate) fn parse() -> anyhow::Result<Cli> {
    parse_from(std::env::args_os().collect())
}

fn parse_from(args: Vec<OsString>) -> anyhow::Result<Cli> {
    // First without the file, to learn whether there is one (and for every other command).
    let matches = Cli::command().get_matches_from(&args);
    let mut cli = Cli::from_arg_matches(&matches)?;
    let Command::Serve(serve) = &cli.command else {
        return Ok(cli);
    };
    let (matches, file_keys) = match &serve.config {
        None => (matches, BTreeSet::new()),
        Some(path) => {
            let (command, keys) = layer_file(Cli::command(), path)?;
            let matches = command.get_matches_from(&args);
            cli = Cli::from_arg_matches(&matches)?;
            (matches, keys)
        }
    };
    if let Command::Serve(serve) = &mut cli.command
        && serve.print_config
        && let Some(("serve", serve_matches)) = matches.subcommand()
    {
        serve.effective_config = Some(render(
            &Cli::command(),
            serve_matches,
            serve.config.as_deref(),
            &file_keys,
        ));
    }
    Ok(cli)
}

/// The settings (`serve` flags that are keys), in declaration order.
fn settings(serve: &clap::Command) -> impl Iterator<Item = (&str, &Arg)> {
    serve.get_arguments().filter_map(|arg| {
        let key = arg.get_long()?;
        (!NOT_KEYS.contains(&key)).then_some((key, arg))
    })
}

/// Whether a setting takes a list (`hostname = ["a", "b"]`).
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// Whether a setting is an on/off switch (`key = true`).
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Reads `path` and returns the command with the file's values as the `serve` flags' defaults,
/// and the keys the file set.
fn layer_file(
    mut command: clap::Command,
    path: &Path,
) -> anyhow::Result<(clap::Command, BTreeSet<String>)> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration file {shown}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("the configuration file {shown} is not valid TOML: {e}"))?;
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| anyhow!("no serve command"))?
        .clone();
    // For checking one value at a time: the environment must not take part.
    let checker = serve.clone().mut_args(|a| a.env(None::<&str>));
    let mut defaults = Vec::new();
    for (key, value) in &table {
        let Some((_, arg)) = settings(&serve).find(|(k, _)| k == key) else {
            bail!("{}", unknown_key(&serve, path, key));
        };
        let values = texts(arg, value).map_err(|e| anyhow!("{shown}: key `{key}`: {e}"))?;
        if !is_switch(arg) {
            for text in &values {
                check(&checker, key, text)
                    .map_err(|e| anyhow!("{shown}: key `{key}`: invalid value {text:?}: {e}"))?;
            }
        }
        defaults.push((arg.get_id().clone(), values));
    }
    command = command.mut_subcommand("serve", |mut serve| {
        for (id, values) in defaults {
            serve = serve.mut_arg(id, |arg| arg.default_values(values));
        }
        serve
    });
    Ok((command, table.keys().cloned().collect()))
}

/// The message for a key that is no setting, with the likely one if it is only spelt differently.
fn unknown_key(serve: &clap::Command, path: &Path, key: &str) -> String {
    let mut message = format!(
        "{}: unknown key `{key}`; the keys are the `usher serve` flags without their dashes: {}",
        path.display(),
        settings(serve)
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let kebab = key.replace('_', "-").to_ascii_lowercase();
    if kebab != key && settings(serve).any(|(k, _)| k == kebab) {
        let _ = write!(message, " (did you mean `{kebab}`?)");
    }
    message
}

/// A file value as the texts a flag would have been given.
fn texts(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, not {}",
            other.type_str()
        )),
    };
    match value {
        Value::Boolean(_) if !is_switch(arg) => {
            Err("expected a string or a number, not a boolean".into())
        }
        _ if is_switch(arg) && !value.is_bool() => {
            Err(format!("expected true or false, not {}", value.type_str()))
        }
        Value::Array(items) if is_list(arg) => items.iter().map(scalar).collect(),
        Value::Array(_) => Err("expected one value, not an array".into()),
        other => Ok(vec![scalar(other)?]),
    }
}

/// Runs one value through its flag's own parser (`serve --key=value`), so a file value is held to
/// exactly the rules of the flag. Only a refusal of the value counts: anything else clap might
/// say of a command line with one flag (another flag it needs) is not about this value.
fn check(checker: &clap::Command, key: &str, text: &str) -> Result<(), String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Err(error) = checker
        .clone()
        .try_get_matches_from([OsString::from("serve"), format!("--{key}={text}").into()])
    else {
        return Ok(());
    };
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation | ErrorKind::InvalidUtf8
    ) {
        return Ok(());
    }
    // Clap's own message names the flag, not the key: keep only the reason.
    if let Some(source) = std::error::Error::source(&error) {
        return Err(source.to_string());
    }
    Err(match error.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => error.kind().to_string(),
    })
}

/// The settings in force as a configuration file, each with where it came from.
fn render(
    command: &clap::Command,
    matches: &ArgMatches,
    file: Option<&Path>,
    file_keys: &BTreeSet<String>,
) -> String {
    let mut out =
        String::from("# The settings `usher serve` would run with, and where each comes from.\n");
    let Some(serve) = command.find_subcommand("serve") else {
        return out;
    };
    for (key, arg) in settings(serve) {
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment ({})",
                arg.get_env()
                    .map_or_else(String::new, |e| e.to_string_lossy().into_owned())
            ),
            _ if file_keys.contains(key) => file.map_or_else(
                || "configuration file".to_owned(),
                |f| format!("configuration file {}", f.display()),
            ),
            _ => "default".to_owned(),
        };
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let raw = if key == "store" {
            // A database URL may hold a password.
            raw.iter()
                .map(|url| usher_server::store::redact_url(url))
                .collect()
        } else {
            raw
        };
        let value = if arg.is_hide_env_values_set() && !raw.is_empty() {
            Some(toml::Value::String("<hidden>".into()))
        } else if is_switch(arg) {
            Some(toml::Value::Boolean(matches.get_flag(id)))
        } else if is_list(arg) {
            Some(toml::Value::Array(
                raw.into_iter().map(toml::Value::String).collect(),
            ))
        } else {
            raw.into_iter()
                .next()
                .map(|text| match text.parse::<i64>() {
                    Ok(n) => toml::Value::Integer(n),
                    Err(_) => toml::Value::String(text),
                })
        };
        match value {
            Some(value) => {
                let _ = writeln!(out, "{key} = {value}  # {source}");
            }
            None => {
                let _ = writeln!(out, "# {key} is not set");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
