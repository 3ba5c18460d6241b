//! `simqtt passwd`: add, update or delete users in a mosquitto-format password file, like
//! `mosquitto_passwd` (the files work with both brokers).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use rand::TryRngCore;
use simqtt::broker::auth::{
    split_password_line, PasswordHash, PBKDF2_DEFAULT_ITERATIONS, PBKDF2_MAX_ITERATIONS, SALT_BYTES,
};
use simqtt::scram::{self, ScramCredential};

#[derive(clap::Args)]
pub struct Args {
    /// Create a new password file, replacing any existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Batch mode: take the password from the command line instead of prompting.
    #[arg(short = 'b')]
    batch: bool,
    /// Delete USER instead of adding or updating it.
    #[arg(short = 'D')]
    delete: bool,
    /// PBKDF2-SHA512 iterations of the new hash (mosquitto_passwd's -I). The default follows
    /// OWASP's advice for PBKDF2-SHA512; the broker pays one such derivation per CONNECT with a
    /// password, and mosquitto 2.x reads any count (its own default is 101).
    #[arg(
        short = 'I',
        long = "iterations",
        value_name = "COUNT",
        default_value_t = PBKDF2_DEFAULT_ITERATIONS,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(PBKDF2_MAX_ITERATIONS)),
        conflicts_with = "delete"
    )]
    iterations: u32,
    /// Also store SCRAM-SHA-256 credentials (salt, 4096 iterations, StoredKey, ServerKey)
    /// after the hash, for MQTT 5.0 enhanced authentication (`--auth-method SCRAM-SHA-256`).
    /// mosquitto ignores them. Without --scram an updated user loses any it had.
    #[arg(long = "scram", conflicts_with = "delete")]
    scram: bool,
    /// The password file.
    file: PathBuf,
    /// The user name (must not contain `:`).
    user: String,
    /// The password (with -b only).
    password: Option<String>,
}

/// What to do to a user's entry.
enum Change {
    /// The hash, and the SCRAM credential when one is stored too.
    Set(PasswordHash, Option<ScramCredential>),
    Delete,
}

/// Applies `change` for `user` to the text of a password file (`None`: no file yet), keeping
/// every other line (comments included) as it was. Returns the new text and whether `user`
/// was in the file.
fn edit(existing: Option<&str>, user: &str, change: &Change) -> (String, bool) {
    let mut out = String::new();
    let mut found = false;
    for line in existing.unwrap_or_default().lines() {
        let is_user = split_password_line(line).is_some_and(|(name, _)| name == user);
        if !is_user {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if let (Change::Set(hash, scram), false) = (change, found) {
            out.push_str(&entry(user, hash, scram.as_ref()));
        }
        // A second line for the same user is dropped: only one can be in force.
        found = true;
    }
    if let (Change::Set(hash, scram), false) = (change, found) {
        out.push_str(&entry(user, hash, scram.as_ref()));
    }
    (out, found)
}

/// A user's line: `user:HASH` or `user:HASH:SCRAM-SHA-256$...`.
fn entry(user: &str, hash: &PasswordHash, scram: Option<&ScramCredential>) -> String {
    match scram {
        Some(credential) => format!("{user}:{hash}:{credential}\n"),
        None => format!("{user}:{hash}\n"),
    }
}

/// The SCRAM-SHA-256 credential of `password`, with a salt from the OS.
fn new_scram(password: &str) -> anyhow::Result<ScramCredential> {
    let mut salt = [0u8; scram::SALT_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .context("reading random bytes from the OS for the salt")?;
    Ok(ScramCredential::derive(
        password.as_bytes(),
        &salt,
        scram::DEFAULT_ITERATIONS,
    ))
}

fn check_user(user: &str) -> anyhow::Result<()> {
    if user.is_empty() {
        bail!("the user name is empty");
    }
    if user.contains(':') {
        bail!("the user name must not contain the ':' character");
    }
    if user.contains(['\n', '\r']) || user.trim() != user {
        bail!("the user name must not start or end with blanks or contain line breaks");
    }
    if user.len() > 65_535 {
        bail!("the user name is longer than 65,535 bytes (MQTT's limit)");
    }
    Ok(())
}

/// Reads one line from stdin with terminal echo off (when stdin is a terminal).
fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}");
    std::io::stderr().flush().ok();
    let terminal = std::io::stdin().is_terminal();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let echo_off = terminal && stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if echo_off {
        stty("echo");
        eprintln!();
    }
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn new_hash(password: &str, iterations: u32) -> anyhow::Result<PasswordHash> {
    if password.is_empty() {
        bail!("empty password");
    }
    // Salts come from the OS here; inside the broker and simulation they come from a seeded
    // RNG.
    let mut salt = [0u8; SALT_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .context("reading random bytes from the OS for the salt")?;
    Ok(PasswordHash::with_salt(
        password.as_bytes(),
        salt,
        iterations,
    ))
}

/// Replaces `path` with `text` via a temporary file and a rename, keeping the permissions of
/// an existing file; a new file is readable by its owner only (it holds password hashes).
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        file.set_permissions(meta.permissions())
            .with_context(|| format!("setting permissions of {}", tmp.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_user(&args.user)?;
    match (&args.password, args.batch, args.delete) {
        (Some(_), _, true) => bail!("-D takes no password"),
        (Some(_), false, false) => bail!("give -b to pass the password on the command line"),
        (None, true, false) => bail!("-b needs a password after the user name"),
        _ => {}
    }
    let existing = if args.create {
        None
    } else {
        match std::fs::read_to_string(&args.file) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{} does not exist (give -c to create it)",
                args.file.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", args.file.display())),
        }
    };
    let change = if args.delete {
        Change::Delete
    } else {
        let password = match args.password {
            Some(password) => password,
            None => {
                let first = prompt("Password: ")?;
                let second = prompt("Reenter password: ")?;
                if first != second {
                    bail!("passwords do not match");
                }
                first
            }
        };
        let scram = if args.scram {
            Some(new_scram(&password)?)
        } else {
            None
        };
        Change::Set(new_hash(&password, args.iterations)?, scram)
    };
    let (text, found) = edit(existing.as_deref(), &args.user, &change);
    if args.delete && !found {
        eprintln!(
            "simqtt: warning: user {} not found in {}",
            args.user,
            args.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    write_file(&args.file, &text)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use simqtt::broker::auth::PasswordFile;

    use super::*;

    fn set(password: &str) -> Change {
        Change::Set(
            PasswordHash::with_salt(password.as_bytes(), [7; SALT_BYTES], 101),
            None,
        )
    }

    #[test]
    fn edit_creates_updates_and_deletes_keeping_other_lines() {
        let (text, found) = edit(None, "alice", &set("a"));
        assert!(!found);
        assert!(text.starts_with("alice:$7$101$"));
        let existing = format!(
            "# users\n{text}bob:{}\n",
            PasswordHash::with_salt(b"b", [1; 12], 101)
        );
        let (updated, found) = edit(Some(&existing), "alice", &set("new"));
        assert!(found);
        assert_eq!(updated.lines().count(), 3);
        assert!(updated.starts_with("# users\nalice:"));
        let file = PasswordFile::parse(&updated, Path::new("pw")).unwrap();
        assert!(file.verify("alice", Some(b"new")));
        assert!(file.verify("bob", Some(b"b")));
        let (deleted, found) = edit(Some(&updated), "alice", &Change::Delete);
        assert!(found);
        assert!(!deleted.contains("alice"));
        assert!(deleted.contains("# users\nbob:"));
        let (_, found) = edit(Some(&deleted), "carol", &Change::Delete);
        assert!(!found);
    }

    /// Issue 14, defect 9: without -I the hash gets the modern default count; -I sets it.
    #[test]
    fn iterations_default_to_the_modern_count_and_i_chooses() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.args.iterations);
        assert_eq!(
            parse(&["passwd", "-b", "pw", "u", "p"]).unwrap(),
            PBKDF2_DEFAULT_ITERATIONS
        );
        assert_eq!(parse(&["passwd", "-I", "101", "pw", "u"]).unwrap(), 101);
        assert_eq!(
            parse(&["passwd", "--iterations", "500000", "pw", "u"]).unwrap(),
            500_000
        );
        assert!(parse(&["passwd", "-I", "0", "pw", "u"]).is_err());
        assert!(parse(&["passwd", "-I", "10000001", "pw", "u"]).is_err());
        assert!(parse(&["passwd", "-D", "-I", "5", "pw", "u"]).is_err());
        let hash = new_hash("p", 1234).unwrap();
        assert!(hash.to_string().starts_with("$7$1234$"));
    }

    #[test]
    fn user_names_are_checked() {
        assert!(check_user("alice").is_ok());
        assert!(check_user("a:b").is_err());
        assert!(check_user("").is_err());
        assert!(check_user(" a").is_err());
    }

    #[test]
    fn run_in_batch_mode_creates_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        let args = |create, delete, user: &str, password: Option<&str>| Args {
            create,
            batch: password.is_some(),
            delete,
            // Few iterations: the test hashes several passwords (the default is pinned below).
            iterations: 1000,
            scram: user == "v",
            file: file.clone(),
            user: user.into(),
            password: password.map(str::to_string),
        };
        assert!(
            run(args(false, false, "u", Some("p"))).is_err(),
            "no file without -c"
        );
        assert_eq!(
            run(args(true, false, "u", Some("p"))).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run(args(false, false, "v", Some("q"))).unwrap(),
            ExitCode::SUCCESS
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed = PasswordFile::parse(&text, &file).unwrap();
        assert!(parsed.verify("u", Some(b"p")) && parsed.verify("v", Some(b"q")));
        // --scram (given for v) stores a SCRAM credential of the same password.
        assert!(parsed.scram("u").is_none());
        let credential = parsed.scram("v").expect("v has a SCRAM credential");
        assert_eq!(credential.iterations, scram::DEFAULT_ITERATIONS);
        assert_eq!(
            credential,
            &ScramCredential::derive(b"q", &credential.salt, credential.iterations)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            run(args(false, true, "u", None)).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run(args(false, true, "u", None)).unwrap(),
            ExitCode::from(1)
        );
        assert!(
            run(args(false, false, "w", Some(""))).is_err(),
            "empty password"
        );
    }
}
