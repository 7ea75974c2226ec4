//! Checks that output leaks no kernel address.

/// Fails if `text` holds something that looks like a kernel address: `0xffff…`, a bare
/// hex word starting with ffff, or a decimal at or above the kernel half of the address space.
pub fn assert_no_addresses(text: &str) {
    assert!(!text.contains("0xffff"), "kernel address in output");
    for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
        assert!(
            !(word.len() >= 12 && word.to_ascii_lowercase().starts_with("ffff")),
            "kernel address {word} in output"
        );
    }
    for word in text.split(|c: char| !c.is_ascii_digit()) {
        if word.len() >= 19 {
            if let Ok(v) = word.parse::<u64>() {
                assert!(
                    v < 0xffff_8000_0000_0000,
                    "kernel address {v} (decimal) in output"
                );
            }
        }
    }
}
