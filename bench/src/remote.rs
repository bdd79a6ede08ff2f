//! The remote-runner figures: the same runner behind a user-space delay proxy
//! ([`crate::delay`]), reached over HTTPS through the proxy's port, so that every figure pays
//! the round trip a far-away runner would. busd is the same process as in the local figures;
//! the CLI names the proxy's origin per call (`bus --api-url`), and busd keeps a warm pool of
//! connections to it after the first call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::delay::DelayProxy;
use crate::load;
use crate::measure::{self, Ms, ms};
use crate::stack::Stack;
use crate::{Failed, Plan, Row, check, end_run, faster, live_run, say};

/// Every remote figure, on one delay proxy in front of the runner's HTTPS port.
pub fn figures(
    stack: &Stack,
    plan: &Plan,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<Row>, Failed> {
    let upstream: SocketAddr = stack
        .https
        .trim_start_matches("https://")
        .parse()
        .map_err(|e| {
            Failed(format!(
                "the runner's origin {} is no address: {e}",
                stack.https
            ))
        })?;
    let proxy = DelayProxy::start(upstream, plan.rtt)?;
    let remote = Remote {
        stack,
        plan,
        runtime,
        origin: proxy.https_origin(),
        rtt: ms_of(proxy.rtt),
        link: format!("RTT {}", ms(ms_of(proxy.rtt))),
        ca: stack.ca_pem()?,
    };
    say(&format!(
        "remote figures: the runner behind a delay proxy on {} ({})",
        remote.origin, remote.link
    ));
    Ok(vec![
        remote.runs()?,
        remote.run_overhead()?,
        remote.keystroke()?,
        remote.follow_lag()?,
    ])
}

/// What every remote figure needs: the stack, the plan and the simulated link.
struct Remote<'a> {
    stack: &'a Stack,
    plan: &'a Plan,
    runtime: &'a tokio::runtime::Runtime,
    /// The proxy as an HTTPS origin.
    origin: String,
    /// The link's round trip, ms.
    rtt: f64,
    /// "RTT 20 ms", as the rows name the link.
    link: String,
    /// The bench CA (PEM), for the direct clients.
    ca: Vec<u8>,
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Remote<'_> {
    /// `bus containers runs` through the warm pool against a cold `curl` over TLS and a warm
    /// keep-alive client.
    fn runs(&self) -> Result<Row, Failed> {
        let Remote {
            stack,
            plan,
            origin,
            ..
        } = self;
        say("measuring remote `bus containers runs` and its anchors");
        let path = "/api/v1/containers/runs";
        let cmds = [
            stack.bus_cmd("bus", &["--api-url", origin, "containers", "runs"]),
            stack.curl_cmd("`curl` over TLS (cold)", origin, path),
        ];
        let answered = stack.lists_answered()?;
        let walls = measure::interleaved(&cmds, plan.n, plan.warmup, &stack.tmp)?;
        let answered = stack.lists_answered()? - answered;
        let (ours, curl) = (Ms::of(&walls[0]), Ms::of(&walls[1]));
        let warm = self.runtime.block_on(self.keep_alive(path))?;
        let warm = Ms::of(&warm);
        let ratio = curl.median / ours.median;
        Ok(Row {
            figure: format!(
                "remote `bus containers runs` wall time, {}, warm busd pool (CLI end to end)",
                self.link
            ),
            ours: format!(
                "{ours}<br>{answered} of {} calls answered from busd's watched list",
                plan.n + plan.warmup
            ),
            anchors: format!(
                "{}: {curl}, {}<br>one keep-alive client (in-process, a warm TLS connection), \
             per request: {warm}; ours is {}",
                cmds[1].label,
                faster(curl.median, ours.median),
                if ours.median >= warm.median {
                    format!("{} more", ms(ours.median - warm.median))
                } else {
                    format!("{} less", ms(warm.median - ours.median))
                },
            ),
            target: format!("≥ 3.5× curl TLS: {}", check(ratio >= 3.5)),
        })
    }

    /// The plan's `n` timed GETs of `path` after its warm-up rounds, one at a time on one kept-alive connection.
    async fn keep_alive(&self, path: &str) -> Result<Vec<Duration>, Failed> {
        let (n, warmup) = (self.plan.n, self.plan.warmup);
        let client = load::rest_client(&self.ca)?;
        let url = format!("{}{path}", self.origin);
        let mut walls = Vec::with_capacity(n);
        for i in 0..warmup + n {
            let start = Instant::now();
            client
                .get(&url)
                .bearer_auth(self.stack.token())
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| Failed(format!("GET {url} failed: {e}")))?
                .bytes()
                .await
                .map_err(|e| Failed(format!("GET {url} failed: {e}")))?;
            if i >= warmup {
                walls.push(start.elapsed());
            }
        }
        Ok(walls)
    }

    /// `bus containers run -- true` through the proxy against the same straight to the runner.
    fn run_overhead(&self) -> Result<Row, Failed> {
        let Remote {
            stack,
            plan,
            origin,
            ..
        } = self;
        say("measuring remote run overhead");
        let cmds = [
            stack.bus_cmd(
                "bus",
                &["--api-url", origin, "containers", "run", "--", "true"],
            ),
            stack.bus_cmd(
                "the same straight to the runner (local)",
                &["containers", "run", "--", "true"],
            ),
        ];
        // Twice the rounds: a run's own spread is larger than the round trip.
        let walls = measure::interleaved(&cmds, 2 * plan.n, plan.warmup, &stack.tmp)?;
        let (ours, local) = (Ms::of(&walls[0]), Ms::of(&walls[1]));
        // What the link adds, pair by pair: the two runs of a round ran seconds apart, so
        // the machine's drift cancels out.
        let added: Vec<f64> = walls[0]
            .iter()
            .zip(&walls[1])
            .map(|(ours, local)| ms_of(*ours) - ms_of(*local))
            .collect();
        let extra = Ms::of_ms(&added).median;
        Ok(Row {
            figure: format!(
                "remote run overhead: `bus containers run -- true` wall time, {}",
                self.link
            ),
            ours: ours.to_string(),
            anchors: format!(
                "{}: {local}; remote adds {} ({:.2} RTT; the median of the {} rounds' differences)",
                cmds[1].label,
                ms(extra),
                extra / self.rtt,
                added.len()
            ),
            target: format!("≤ local + 1 RTT: {}", check(extra <= self.rtt)),
        })
    }

    /// Keystroke round trips of `bus containers exec -i` through the proxy, beside the local ones.
    fn keystroke(&self) -> Result<Row, Failed> {
        let Remote {
            stack,
            plan,
            origin,
            ..
        } = self;
        let n = plan.exec_n / 2;
        say(&format!(
            "measuring remote exec keystroke round trips ({n})"
        ));
        let run = stack
            .bus(&["containers", "run", "-d", "--", "sleep", "3600"])?
            .trim()
            .to_owned();
        stack.container_of(&run)?;
        let exec = |api: &[&str]| {
            let args = [api, &["containers", "exec", "-i", &run, "--", "cat"][..]].concat();
            stack.bus_cmd("bus", &args)
        };
        let remote = load::keystroke_rtt(&exec(&["--api-url", origin]), n, 20);
        let local = load::keystroke_rtt(&exec(&[]), n, 20);
        stack.bus(&["containers", "delete", &run])?;
        let (ours, local) = (Ms::of_ms(&remote?), Ms::of_ms(&local?));
        let budget = self.rtt + 2.0;
        Ok(Row {
            figure: format!(
                "remote exec keystroke round trip (one byte to `cat` and back, {n} in one session), \
             {}",
                self.link
            ),
            ours: format!("{ours} (`bus containers exec -i`, CLI → busd → proxy → runner)"),
            anchors: format!(
                "the same straight to the runner (local): {local}; remote adds {}",
                ms(ours.median - local.median)
            ),
            target: format!(
                "median ≤ RTT + 2 ms ({}): {}",
                ms(budget),
                check(ours.median <= budget)
            ),
        })
    }

    /// `logs -f` delivery lag of a live run, followed through busd over the proxy against direct
    /// REST follows over the same proxy.
    fn follow_lag(&self) -> Result<Row, Failed> {
        const FOLLOWERS: usize = 10;
        let Remote {
            stack,
            plan,
            runtime,
            origin,
            ca,
            ..
        } = self;
        say("measuring remote `logs -f` lag");
        let run = live_run(stack)?;
        let ours = runtime.block_on(load::follow_busd(
            &stack.socket,
            &run,
            load::Follow {
                followers: FOLLOWERS,
                connections: 1,
                window: plan.follow_window,
                api_url: Some(origin),
            },
            || 0,
        ));
        let direct = runtime.block_on(load::follow_rest(
            origin,
            ca,
            stack.token(),
            &run,
            FOLLOWERS,
            plan.follow_window,
            || 0,
        ));
        end_run(stack, &run)?;
        let (ours, direct) = (Ms::of_ms(&ours?.lags_ms), Ms::of_ms(&direct?.lags_ms));
        let budget = direct.median + 2.0;
        Ok(Row {
            figure: format!(
                "remote `logs -f` lag: {FOLLOWERS} followers of a live run (a line every 20 ms, {} \
             s), {}",
                plan.follow_window.as_secs(),
                self.link
            ),
            ours: format!(
                "median {}, p99 {} (runner read → follower, through busd)",
                ms(ours.median),
                ms(ours.p99)
            ),
            anchors: format!(
                "{FOLLOWERS} direct REST follows over TLS through the same proxy: median {}, p99 \
             {}; half the RTT is {}",
                ms(direct.median),
                ms(direct.p99),
                ms(self.rtt / 2.0)
            ),
            target: format!(
                "median ≤ direct + 2 ms ({}): {}",
                ms(budget),
                check(ours.median <= budget)
            ),
        })
    }
}
