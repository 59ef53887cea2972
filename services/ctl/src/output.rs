//! Printing results: text for people by default, JSON with `--json`.

/// Prints `json` when asked for JSON, else the text `human` builds.
pub fn emit(json_mode: bool, json: serde_json::Value, human: impl FnOnce() -> String) {
    if json_mode {
        println!("{json}");
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{text}");
        }
    }
}
