//! Topic templates, as emqtt-bench writes them: `bench/%i` gives each client its own topic.

/// Expands `template` for one client: `%i` becomes its sequence number (from 1), `%c` its
/// client identifier, `%%` a `%`. Any other `%` sequence is kept as written.
pub(crate) fn expand(template: &str, seq: u64, client_id: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('i') => out.push_str(&seq.to_string()),
            Some('c') => out.push_str(client_id),
            Some('%') => out.push('%'),
            _ => {
                out.push('%');
                continue;
            }
        }
        chars.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn placeholders() {
        assert_eq!(expand("bench/%i", 7, "c"), "bench/7");
        assert_eq!(expand("t/%c/%i/x", 12, "pub-12"), "t/pub-12/12/x");
        assert_eq!(expand("100%%/%x/%", 1, "c"), "100%/%x/%");
        assert_eq!(expand("plain", 1, "c"), "plain");
    }
}
