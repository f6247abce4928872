//! `farine dlq list|show|replay QUEUE`: what farine parked in `QUEUE.dlq` and why, and
//! putting it back on its original exchange and routing key.

use crate::Failure;
use farine::broker::Broker;
use farine::dlq::{self, DeadLetter};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy)]
pub enum Action {
    List,
    Show,
    Replay,
}

pub fn run(action: Action, queue: &str, limit: usize) -> Result<ExitCode, Failure> {
    let (settings, runtime) = crate::broker_settings()?;
    runtime.block_on(async {
        let broker = Broker::for_service(&settings).await?;
        let outcome = match action {
            Action::List | Action::Show => {
                let letters = dlq::peek(&broker, queue, limit)
                    .await
                    .map_err(|err| Failure::new(err.to_string()))?;
                if letters.is_empty() {
                    println!("{} is empty", dlq::queue_name(queue));
                }
                for (index, letter) in letters.iter().enumerate() {
                    match action {
                        Action::List => println!("{}", line(index + 1, letter)),
                        _ => println!("{}", detail(letter)),
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            Action::Replay => {
                let replayed = dlq::replay(&broker, queue, limit)
                    .await
                    .map_err(|err| Failure::new(err.to_string()))?;
                let dlq = dlq::queue_name(queue);
                let target = dlq.strip_suffix(".dlq").unwrap_or(&dlq);
                println!("moved {} message(s) from {dlq} to {target}", replayed.moved);
                if replayed.left > 0 {
                    println!("{} message(s) left in {dlq} (over --limit)", replayed.left);
                }
                if replayed.came_back > 0 {
                    println!(
                        "{} message(s) came back to {dlq}: they failed again",
                        replayed.came_back
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        };
        broker.close().await;
        outcome
    })
}

/// `#1  2026-11-22T03:10:00Z  attempts=3  calc/operations  the ledger is closed  {"a":1}`
fn line(index: usize, letter: &DeadLetter) -> String {
    let mut body = printable(&String::from_utf8_lossy(&letter.body));
    if body.chars().count() > 60 {
        body = body.chars().take(57).collect::<String>() + "...";
    }
    // Headers are the sender's words too: escape the whole line.
    printable(&format!(
        "#{index}  {}  attempts={}  {}/{}  {}  {body}",
        letter.failed_at.as_deref().unwrap_or("-"),
        letter.attempts,
        letter.original_exchange.as_deref().unwrap_or("?"),
        letter.original_routing_key.as_deref().unwrap_or("?"),
        letter.error.as_deref().unwrap_or("(no reason recorded)"),
    ))
}

/// `text` with control characters (ESC, BEL, CR, ...) escaped, so a body cannot drive the
/// terminal it is listed on.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One JSON object per message: why, where from, and the body (as JSON when it is JSON).
fn detail(letter: &DeadLetter) -> String {
    let body = serde_json::from_slice::<serde_json::Value>(&letter.body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&letter.body).into_owned())
    });
    serde_json::json!({
        "error": letter.error,
        "attempts": letter.attempts,
        "original_exchange": letter.original_exchange,
        "original_routing_key": letter.original_routing_key,
        "failed_at": letter.failed_at,
        "body": body,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_lines_escape_control_characters() {
        let letter = DeadLetter {
            body: b"\x1b[2J\x07evil\rline".to_vec(),
            error: Some("bad\x1b]0;title\x07".into()),
            attempts: 1,
            original_exchange: Some("calc".into()),
            original_routing_key: Some("ops\x1b".into()),
            failed_at: None,
        };
        let listed = line(1, &letter);
        assert!(!listed.chars().any(char::is_control), "{listed:?}");
        assert!(listed.contains(r"\u{1b}[2J\u{7}evil\rline"), "{listed}");
        assert!(listed.contains(r"bad\u{1b}]0;title\u{7}"), "{listed}");
    }
}
