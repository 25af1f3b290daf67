//! Markdown to sanitised HTML (pulldown-cmark + ammonia) and plain-text previews.

use pulldown_cmark::{html, Event, Options, Parser};

/// Longest preview, in characters.
pub const PREVIEW_CHARS: usize = 280;

/// Renders CommonMark (with tables, strikethrough and task lists) and removes everything a
/// browser could execute: scripts, event handlers, `javascript:` links, raw HTML outside
/// ammonia's allow-list. Links get `rel="noopener noreferrer"`.
pub fn to_safe_html(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let mut rendered = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut rendered, Parser::new_ext(markdown, options));
    ammonia::clean(&rendered)
}

/// The body's text without markup, whitespace collapsed, cut at [`PREVIEW_CHARS`]
/// characters (with `…` when cut).
pub fn preview(markdown: &str) -> String {
    let mut text = String::new();
    for event in Parser::new(markdown) {
        match event {
            Event::Text(t) | Event::Code(t) => text.push_str(&t),
            Event::SoftBreak | Event::HardBreak | Event::End(_) => text.push(' '),
            _ => {}
        }
    }
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(PREVIEW_CHARS) {
        None => collapsed,
        Some((cut, _)) => format!("{}…", collapsed[..cut].trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_handlers_and_javascript_links_are_removed() {
        let html = to_safe_html(
            "# Hi\n\n<script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)> **bold**",
        );
        assert!(html.contains("<h1>Hi</h1>"), "{html}");
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        for bad in ["<script", "javascript:", "onerror"] {
            assert!(!html.contains(bad), "{bad} survived in {html}");
        }
    }

    #[test]
    fn previews_are_plain_text_and_cut_at_a_character_boundary() {
        assert_eq!(
            preview("# Title\n\nSome *emphasis* and `code`."),
            "Title Some emphasis and code."
        );
        let long = "é".repeat(PREVIEW_CHARS + 10);
        let cut = preview(&long);
        assert_eq!(cut.chars().count(), PREVIEW_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
