//! Text from elsewhere made safe to print on a terminal.
//!
//! A peer's message and a relay's refusal are untrusted. Printed as they are, a backspace or a
//! vertical tab moves the cursor over what is already on the screen (another sender's name,
//! a warning), an escape sequence hides or rewrites lines, and bidirectional controls reorder
//! them. [`printable`] writes every such character as a visible escape instead.

use std::fmt::Write;

/// `text` with backslashes doubled, tab, newline and carriage return as `\t`, `\n`, `\r`, and
/// every other control character (C0, DEL, C1), line or paragraph separator and bidirectional
/// control as `\u{…}`: one line, shown as sent, that can move or hide nothing.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_layout_control(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that change the layout of what follows them without being control characters:
/// the line and paragraph separators, and the bidirectional marks, embeddings, overrides and
/// isolates.
fn is_layout_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn what_moves_the_cursor_or_the_text_is_shown_escaped() {
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(printable("a\tb\nc\rd\\e"), "a\\tb\\nc\\rd\\\\e");
        assert_eq!(printable("x\u{8}\u{8}alice"), "x\\u{0008}\\u{0008}alice");
        assert_eq!(printable("hi\u{b}\u{c}"), "hi\\u{000b}\\u{000c}");
        assert_eq!(printable("\u{1b}[8mhidden"), "\\u{001b}[8mhidden");
        assert_eq!(printable("\u{7f}\u{85}\u{9b}"), "\\u{007f}\\u{0085}\\u{009b}");
        assert_eq!(printable("abc\u{202e}fed\u{2066}"), "abc\\u{202e}fed\\u{2066}");
        assert_eq!(printable("one\u{2028}two"), "one\\u{2028}two");
    }
}
