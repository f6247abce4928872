//! Bounded text: every value farine quotes in an error, a header or a log line goes through
//! [`clip`], so a hostile 15 MiB argument costs a few hundred bytes there, not its size again.

use std::borrow::Cow;

/// How much of a quoted text is kept: enough to recognise it, never enough to hurt.
pub(crate) const MAX_QUOTED: usize = 1024;

/// `text` cut to [`MAX_QUOTED`] bytes (on a character boundary), saying how much was left out.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    clip_to(text, MAX_QUOTED)
}

/// [`clip`] with another bound.
pub(crate) fn clip_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}... ({} more bytes)",
        &text[..end],
        text.len() - end
    ))
}

/// [`clip`] for an owned string, reusing it when it is short enough.
pub(crate) fn clip_owned(text: String) -> String {
    match clip(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clipped) => clipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_short_texts_and_says_what_it_cut() {
        assert_eq!(clip("short"), "short");
        let long = "x".repeat(5000);
        let clipped = clip(&long);
        assert!(clipped.len() < 1100);
        assert!(clipped.ends_with("... (3976 more bytes)"), "{clipped}");
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let text = "é".repeat(600); // 1200 bytes, 2 per character
        let clipped = clip(&text);
        assert!(clipped.starts_with(&"é".repeat(512)));
        assert!(clipped.ends_with("(176 more bytes)"), "{clipped}");
    }
}
