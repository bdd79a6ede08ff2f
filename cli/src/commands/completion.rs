//! `bus completion SHELL` and `bus man`: generated from the CLI's own definition (clap).

use std::io::Write as _;
use std::path::PathBuf;

use crate::error::CliError;

/// `bus completion SHELL`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `bus man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write bus.1 and one page per subcommand (bus-containers-run.1, ...) into DIR instead of
    /// printing bus.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl CompletionArgs {
    /// Prints the completion script for the shell.
    pub fn run(self, mut command: clap::Command) -> Result<u8, CliError> {
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut command, "bus", &mut script);
        write_stdout(&script)?;
        Ok(0)
    }
}

impl ManArgs {
    /// Prints or writes the man pages.
    pub fn run(self, command: clap::Command) -> Result<u8, CliError> {
        match self.dir {
            None => {
                let mut page = Vec::new();
                clap_mangen::Man::new(command).render(&mut page)?;
                write_stdout(&page)?;
            }
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                clap_mangen::generate_to(command, &dir)?;
                println!("man pages written to {}", dir.display());
            }
        }
        Ok(0)
    }
}

/// Writes `bytes` to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
