use clap::CommandFactory as _;

use super::*;

fn serve() -> clap::Command {
    Cli::command().find_subcommand("serve").unwrap().clone()
}

/// Every setting is a flag, a file key of the same name and an environment variable named after
/// it, so an operator can guess one from another.
#[test]
fn every_setting_has_an_environment_variable_named_after_its_key() {
    let serve = serve();
    let mut count = 0;
    for (key, arg) in settings(&serve) {
        let expected = format!("USHER_{}", key.to_ascii_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            Some(expected),
            "--{key} needs env = \"USHER_…\" named after it"
        );
        count += 1;
    }
    assert!(count >= 11, "only {count} settings found");
    // The file's own flag is not a key, but has its variable.
    let config = serve
        .get_arguments()
        .find(|a| a.get_long() == Some("config"))
        .unwrap();
    assert_eq!(config.get_env().unwrap(), "USHER_CONFIG");
}

#[test]
fn file_values_become_flag_texts() {
    let serve = serve();
    let arg = |key: &str| settings(&serve).find(|(k, _)| *k == key).unwrap().1.clone();
    let v = |text: &str| -> toml::Value {
        toml::from_str::<toml::Table>(&format!("k = {text}")).unwrap()["k"].clone()
    };
    assert_eq!(
        texts(&arg("retry-after"), &v("5")),
        Ok(vec!["5".to_owned()])
    );
    assert_eq!(
        texts(&arg("clock-skew"), &v("\"90s\"")),
        Ok(vec!["90s".to_owned()])
    );
    assert_eq!(
        texts(&arg("hostname"), &v("[\"a\", \"b\"]")),
        Ok(vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(
        texts(&arg("hostname"), &v("\"a\"")),
        Ok(vec!["a".to_owned()])
    );
    assert_eq!(
        texts(&arg("https-addr"), &v("[\"a\"]")),
        Err("expected one value, not an array".to_owned())
    );
    assert!(
        texts(&arg("retry-after"), &v("true"))
            .unwrap_err()
            .contains("boolean")
    );
    // A float goes to the flag's parser as text, which refuses it for a whole-number flag.
    assert_eq!(
        texts(&arg("retry-after"), &v("1.5")),
        Ok(vec!["1.5".to_owned()])
    );
    assert!(
        texts(&arg("testing-quotas"), &v("1"))
            .unwrap_err()
            .contains("true or false")
    );
    assert_eq!(
        texts(&arg("testing-quotas"), &v("true")),
        Ok(vec!["true".to_owned()])
    );
    assert!(
        texts(&arg("data-dir"), &v("{ a = 1 }"))
            .unwrap_err()
            .contains("table")
    );
}
