//! Where the guides are: one line at the end of `bus --help`, and for each command group a
//! line naming its page under docs/, at the end of the group's and its commands' help and man
//! pages.

use clap::Command;

/// The last line of `bus --help` (and of bus(1)).
pub const ALL: &str = "Guides: docs/ in the bus repository (README.md lists them); \
                       error lines, their causes and fixes: docs/troubleshooting.md";

/// The guide of `bus billing`.
pub const CREDENTIALS: &str = "Guide: docs/credentials.md in the bus repository";

/// The guide of `bus completion` and `bus man`.
pub const CLI: &str = "Guide: docs/cli.md in the bus repository";

/// The guide line of the command group `name`, if it has a page.
fn for_group(name: &str) -> Option<&'static str> {
    Some(match name {
        "containers" | "execs" => CLI,
        "config" => "Guide: docs/cli.md (Settings) in the bus repository",
        "images" | "builds" => "Guide: docs/images.md in the bus repository",
        "auth" => CREDENTIALS,
        "daemon" => "Guide: docs/daemon.md in the bus repository",
        "local" => "Guide: docs/runner.md in the bus repository",
        _ => return None,
    })
}

/// Ends the help of the group `cmd`, and of each of its commands that names no guide of its
/// own, with the group's guide line (its parent's, for a nested group without a page).
pub fn point(cmd: Command) -> Command {
    let line = match cmd.get_after_help() {
        Some(line) => line.clone(),
        None => match for_group(cmd.get_name()) {
            Some(line) => line.into(),
            None => return cmd,
        },
    };
    cmd.after_help(line.clone()).mut_subcommands(move |sub| {
        if sub.get_after_help().is_some() {
            sub
        } else {
            sub.after_help(line.clone())
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The first path under docs/ a guide line names, e.g. `docs/cli.md` (or `docs/`).
    fn page(line: &str) -> &str {
        let start = line.find("docs/").expect("a guide line names docs/");
        let rest = &line[start..];
        &rest[..rest.find([' ', ';', ')']).unwrap_or(rest.len())]
    }

    /// Every command under `cmd`, with its path (`bus containers run`).
    fn walk(cmd: &clap::Command, path: String, all: &mut Vec<(String, Option<String>)>) {
        all.push((path.clone(), cmd.get_after_help().map(|s| s.to_string())));
        for sub in cmd.get_subcommands() {
            walk(sub, format!("{path} {}", sub.get_name()), all);
        }
    }

    #[test]
    fn every_command_ends_its_help_with_a_guide_that_exists() {
        crate::deferred::build_everything();
        let mut all = Vec::new();
        walk(&crate::Cli::command(), "bus".into(), &mut all);
        assert!(all.len() > 40, "only {} commands", all.len());
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (path, line) in all {
            let line = line.unwrap_or_else(|| panic!("`{path} --help` names no guide"));
            let page = page(&line);
            assert!(
                docs.join(page).exists(),
                "`{path} --help` names {page}, which is missing"
            );
        }
    }

    #[test]
    fn bus_help_ends_with_where_the_guides_are() {
        let help = crate::Cli::command().render_help().to_string();
        assert_eq!(help.trim_end().lines().last(), Some(super::ALL));
        assert!(super::ALL.contains("docs/troubleshooting.md"));
    }
}
