//! The runner's TOML configuration (`bus_runner::config::Config::parse`): profiles, plans
//! and accounts.
//!
//! Properties: a config the runner accepts is one it can use — the default profile exists,
//! every account's plan exists, ids and keys are unique, periods are in bounds, and every
//! profile resolves into a run whose image, environment and storage a request could itself
//! have named (so no run of an accepted profile fails on what the operator wrote); a refusal
//! is one line.

#![no_main]

use std::collections::HashSet;

use bus_api::CreateRun;
use bus_runner::config::{Config, LOCAL_PLAN, MAX_PERIOD};
use bus_runner::runs::spec::RunSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let config = match Config::parse(text) {
        Ok(config) => config,
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message:?}");
            return;
        }
    };
    assert!(config.profile(&config.default_profile).is_some());
    assert!(config.plan(LOCAL_PLAN).is_some());
    for plan in config.plans.values() {
        assert!(plan.period.as_secs() >= 1 && plan.period <= MAX_PERIOD);
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for account in &config.accounts {
        assert!(config.plan(&account.plan).is_some());
        assert!(!account.id.is_empty() && account.id.trim() == account.id);
        assert!(ids.insert(&account.id) && keys.insert(account.api_key_sha256));
        assert!(!account.resources.is_empty());
    }
    for name in config.profile_names() {
        let plain = CreateRun {
            profile: Some(name.clone()),
            ..CreateRun::default()
        };
        let spec = RunSpec::parse(plain, &config)
            .unwrap_or_else(|e| panic!("profile {name:?} cannot run: {:?}", e.to_string()));
        let stated = CreateRun {
            profile: Some(name.clone()),
            image: Some(spec.image.clone()),
            env: spec.env.clone(),
            storage: spec.storage.clone(),
            ..CreateRun::default()
        };
        if let Err(e) = RunSpec::parse(stated, &config) {
            panic!(
                "profile {name:?} holds what a request may not say: {:?}",
                e.to_string()
            );
        }
    }
});
