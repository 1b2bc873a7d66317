//! The `confab` command line: bad or missing configuration stops a node at
//! start with one clear line naming the setting — never a panic.

use std::process::Command;

fn serve(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.arg("serve").args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("confab runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

const GOOD: &[(&str, &str)] = &[
    ("CONFAB_REDIS_URL", "redis://127.0.0.1:1"),
    ("CONFAB_MONGO_URL", "mongodb://127.0.0.1:1"),
    ("CONFAB_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ("CONFAB_LISTEN", "127.0.0.1:1"),
];

fn with(overrides: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = GOOD.iter().filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k)).copied().collect();
    env.extend(overrides.iter().filter(|(_, v)| !v.is_empty()).copied());
    env
}

#[test]
fn missing_and_invalid_settings_name_themselves_in_one_line() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("CONFAB_JWT_SECRET", "")], "--jwt-secret (CONFAB_JWT_SECRET)"),
        (&[("CONFAB_JWT_SECRET", "short")], "--jwt-secret (CONFAB_JWT_SECRET)"),
        (&[("CONFAB_REDIS_URL", "")], "--redis-url (CONFAB_REDIS_URL)"),
        (&[("CONFAB_MONGO_URL", "postgres://x")], "--mongo-url (CONFAB_MONGO_URL)"),
        (&[("CONFAB_LISTEN", "everywhere")], "--listen (CONFAB_LISTEN)"),
        (&[("CONFAB_NODE_ID", "no spaces please")], "--node-id (CONFAB_NODE_ID)"),
        (&[("CONFAB_CONFIG", "/nonexistent/confab.toml")], "--config (CONFAB_CONFIG)"),
        (&[("CONFAB_LOG_FORMAT", "xml")], "CONFAB_LOG_FORMAT"),
    ];
    for (overrides, needle) in cases {
        let (code, stderr) = serve(&[], &with(overrides));
        assert_eq!(code, 2, "{overrides:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line, got: {stderr}");
        assert!(lines[0].starts_with("confab: ") && lines[0].contains(needle), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_address_in_use_is_one_clear_line_too() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let addr: &'static str = Box::leak(addr.into_boxed_str());
    let (code, stderr) = serve(&[], &with(&[("CONFAB_LISTEN", addr)]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.trim().starts_with("confab: cannot listen on") && stderr.trim().lines().count() == 1, "{stderr}");
}

#[test]
fn logs_are_one_json_object_per_line_when_asked() {
    use std::io::BufRead;
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mongo = std::env::var("MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("CONFAB_REDIS_URL", redis.as_str()),
            ("CONFAB_MONGO_URL", mongo.as_str()),
            ("CONFAB_MONGO_DB", "confab_cli_json_logs"),
            ("CONFAB_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("CONFAB_LISTEN", "127.0.0.1:0"),
            ("CONFAB_NODE_ID", "json-logs"),
            ("CONFAB_LOG_FORMAT", "json"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("confab runs");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut serving = None;
    for line in stdout.lines().take(50) {
        let line = line.unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if entry["message"] == "confab node serving" {
            serving = Some(entry);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let entry = serving.expect("the node logged that it serves");
    assert_eq!(entry["level"], "INFO", "{entry}");
    assert_eq!(entry["node"], "json-logs", "event fields are top-level: {entry}");
    assert!(entry["timestamp"].is_string() && entry["target"].is_string(), "{entry}");
}

#[test]
fn flags_override_the_environment() {
    // The flag's bad value wins over a good environment variable.
    let (code, stderr) = serve(&["--listen", "nope"], GOOD);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn token_mints_tokens_the_nodes_accept() {
    let secret = "0123456789abcdef0123456789abcdef";
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["token", "--count", "3", "--jwt-secret", secret, "--username-prefix", "lt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    let tokens = confab::auth::Tokens::new(secret, std::time::Duration::from_secs(60));
    for (i, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.split(' ').collect();
        let caller = tokens.verify(parts[2]).expect("a valid token");
        assert_eq!((caller.user_id.to_hex().as_str(), caller.username.as_str()), (parts[0], format!("lt{i}").as_str()));
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_confab")).args(["token", "--jwt-secret", "short"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn apikey_commands_need_mongodb_settings_and_say_so_in_one_line() {
    for args in [&["apikey", "create", "--name", "x"][..], &["apikey", "list"], &["apikey", "revoke", "k"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.trim().lines().count() == 1 && stderr.contains("--mongo-url (CONFAB_MONGO_URL)"), "{stderr}");
        assert!(out.stdout.is_empty(), "no key printed: {args:?}");
    }
}
