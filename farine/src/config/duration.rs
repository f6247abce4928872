//! The one duration grammar of farine, for configuration values (`rpc_timeout = 30s`) and
//! macro arguments (`#[execute::method(restart_delay = "30s")]`) alike.
//!
//! This file is compiled twice: as `farine::config::duration`, and by
//! `#[path = "../../farine/src/config/duration.rs"]` inside farine-macros, which cannot
//! depend on farine (farine depends on it). So it uses only std, and has no doc examples
//! (farine-macros cannot run them); `farine::config::parse_duration` has them.
//!
//! The grammar:
//!
//! - a plain, possibly fractional, number of seconds: `45`, `0.5`;
//! - or one or more `<number><unit>` spans, optionally separated by whitespace, whose sum is
//!   the duration: `30s`, `500ms`, `1h 30m`, `1.5h`, `2 minutes`. The units are those of the
//!   `humantime` crate, case-sensitive: `ns` (`nsec`, `nanos`), `us` (`usec`, `µs`), `ms`
//!   (`msec`, `millis`), `s` (`sec`, `secs`, `second`, `seconds`), `m` (`min`, `mins`,
//!   `minute`, `minutes`), `h` (`hr`, `hrs`, `hour`, `hours`), `d` (`day`, `days`), `w` (`wk`,
//!   `wks`, `week`, `weeks`), `M` (`month`, `months`: 30.44 days), `y` (`yr`, `yrs`, `year`,
//!   `years`: 365.25 days);
//! - at most [`MAX_DURATION`] (7 days).

use std::time::Duration;

/// The longest duration accepted anywhere. Far above any sane timeout, and below RabbitMQ's
/// limit on a queue's message TTL (used for retry delays) and the range of a clock instant.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What a valid duration looks like, for error messages ("expected {EXPECTED}, got ...").
pub const EXPECTED: &str =
    "a duration of at most 7 days, such as 30s, 500ms or 2m, or a number of seconds";

/// Parses a duration (see the module documentation); `None` if `text` is not one, is
/// negative, or is longer than [`MAX_DURATION`]. Surrounding whitespace is ignored.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        // try_from_secs_f64 rejects negative, NaN, infinite and overflowing values.
        Ok(secs) => Duration::try_from_secs_f64(secs).ok()?,
        Err(_) => parse_spans(text)?,
    };
    (duration <= MAX_DURATION).then_some(duration)
}

/// `<number><unit>` spans, summed in nanoseconds (u128: no sum of valid spans overflows
/// before the bound check rejects it).
fn parse_spans(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total: u128 = 0;
    loop {
        let (whole, fraction, after) = number(rest)?;
        let unit_len = after
            .find(|c: char| !(c.is_ascii_alphabetic() || c == 'µ'))
            .unwrap_or(after.len());
        let per_unit = unit_nanos(&after[..unit_len])?;
        total = total.checked_add(whole.checked_mul(per_unit)?)?;
        if let Some((numerator, denominator)) = fraction {
            total = total.checked_add(numerator.checked_mul(per_unit)? / denominator)?;
        }
        // The next span follows after whitespace or directly ("1h30m").
        rest = after[unit_len..].trim_start();
        if rest.is_empty() {
            break;
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    // The remainder is below 10^9, so it fits.
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A number at the start of `text`: its whole part, its fraction as (numerator, denominator)
/// if it has one, and the text after it. Whitespace between digits and before the unit is
/// skipped, as humantime does.
#[allow(clippy::type_complexity)]
fn number(text: &str) -> Option<(u128, Option<(u128, u128)>, &str)> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut whole: u128 = 0;
    let mut fraction: Option<(u128, u128)> = None;
    for (i, c) in text.char_indices() {
        match c {
            '0'..='9' => {
                let digit = u128::from(c as u8 - b'0');
                match &mut fraction {
                    None => whole = whole.checked_mul(10)?.checked_add(digit)?,
                    Some((numerator, denominator)) => {
                        *numerator = numerator.checked_mul(10)?.checked_add(digit)?;
                        *denominator = denominator.checked_mul(10)?;
                    }
                }
            }
            '.' if fraction.is_none() => fraction = Some((0, 1)),
            c if c.is_whitespace() => {}
            c if c.is_ascii_alphabetic() || c == 'µ' => {
                // "1.s": a separator without digits after it.
                if fraction.is_some_and(|(_, denominator)| denominator == 1) {
                    return None;
                }
                return Some((whole, fraction, &text[i..]));
            }
            _ => return None,
        }
    }
    // A number without a unit (a plain number is handled before spans are parsed).
    None
}

/// Nanoseconds per unit, humantime's spellings.
fn unit_nanos(unit: &str) -> Option<u128> {
    const SEC: u128 = 1_000_000_000;
    Some(match unit {
        "nanos" | "nsec" | "ns" => 1,
        "usec" | "us" | "µs" => 1_000,
        "millis" | "msec" | "ms" => 1_000_000,
        "seconds" | "second" | "secs" | "sec" | "s" => SEC,
        "minutes" | "minute" | "min" | "mins" | "m" => 60 * SEC,
        "hours" | "hour" | "hr" | "hrs" | "h" => 3_600 * SEC,
        "days" | "day" | "d" => 86_400 * SEC,
        "weeks" | "week" | "wk" | "wks" | "w" => 7 * 86_400 * SEC,
        "months" | "month" | "M" => 2_630_016 * SEC,
        "years" | "year" | "yr" | "yrs" | "y" => 31_557_600 * SEC,
        _ => return None,
    })
}
