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

/// `value` as one line of JSON that is as safe on a terminal as [`printable`] text: besides
/// what JSON escapes anyway (the C0 controls, quotes, backslashes), DEL, the C1 controls, the
/// line and paragraph separators and the bidirectional controls are written as `\uXXXX`
/// escapes. A JSON reader gets exactly the same strings; a person looking at the line sees
/// escapes instead of a terminal acting on them.
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, TerminalSafeJson);
    value.serialize(&mut serializer)?;
    // serde_json writes only UTF-8, and every escape added here is ASCII.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// serde_json's compact output with the extra escapes of [`json_line`].
struct TerminalSafeJson;

impl serde_json::ser::Formatter for TerminalSafeJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if c.is_control() || is_layout_control(c) {
                writer.write_all(&fragment.as_bytes()[start..at])?;
                // All of them are in the Basic Multilingual Plane: one \u escape each.
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = at + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
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
    use super::{json_line, printable};

    #[test]
    fn a_json_line_escapes_what_a_terminal_acts_on_and_reads_back_the_same() {
        let text = "a\u{7f}b\u{85}c\u{9b}d\u{202e}e\u{2028}f\u{1b}[2J ü ✓ \"q\"";
        let line = json_line(&serde_json::json!({ "text": text })).unwrap();
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(!line.contains('\u{202e}') && !line.contains('\u{2028}'), "{line:?}");
        assert!(
            line.contains("\\u007f") && line.contains("\\u202e") && line.contains("ü ✓"),
            "{line}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["text"], text, "a JSON reader gets exactly the text");
    }

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
