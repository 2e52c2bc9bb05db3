//! Human durations for token lifetimes: `3600`, `90s`, `15m`, `1h`, `7d`.

/// Longest lifetime accepted: one year. A longer-lived token is almost certainly a mistake.
pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("the duration is empty")]
    Empty,
    #[error(
        "{0:?} is not a duration; use a whole number with an optional unit s, m, h or d (e.g. 90s, 15m, 1h, 7d)"
    )]
    Malformed(String),
    #[error("the duration must be at least one second")]
    Zero,
    #[error("the duration {0:?} is longer than one year")]
    TooLong(String),
}

/// Parses a token lifetime into seconds: at least one second, at most a year.
pub fn parse_ttl(text: &str) -> Result<u64, TtlError> {
    match parse_duration(text)? {
        0 => Err(TtlError::Zero),
        secs => Ok(secs),
    }
}

/// Parses a duration into seconds; zero is allowed, more than a year is not.
pub fn parse_duration(text: &str) -> Result<u64, TtlError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TtlError::Empty);
    }
    let malformed = || TtlError::Malformed(text.chars().take(40).collect());
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(malformed()),
    };
    if digits.is_empty() {
        return Err(malformed());
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| TtlError::TooLong(text.to_owned()))?;
    let secs = value
        .checked_mul(multiplier)
        .ok_or_else(|| TtlError::TooLong(text.to_owned()))?;
    if secs > MAX_TTL_SECS {
        return Err(TtlError::TooLong(text.to_owned()));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_ttl(""), Err(TtlError::Empty));
        assert_eq!(parse_ttl("0h"), Err(TtlError::Zero));
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_ttl("1y"), Err(TtlError::Malformed("1y".into())));
        assert_eq!(parse_ttl("h"), Err(TtlError::Malformed("h".into())));
        assert_eq!(parse_ttl("-1h"), Err(TtlError::Malformed("-1h".into())));
        assert_eq!(parse_ttl("1.5h"), Err(TtlError::Malformed("1.5h".into())));
        assert_eq!(parse_ttl("400d"), Err(TtlError::TooLong("400d".into())));
        assert_eq!(
            parse_ttl("99999999999999999999999"),
            Err(TtlError::TooLong("99999999999999999999999".into()))
        );
    }
}
