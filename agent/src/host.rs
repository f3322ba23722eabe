//! The host's real CPU and memory figures, sampled for each heartbeat.
//!
//! CPU usage is a difference between two samples, so an agent keeps one [`HostResources`] for its
//! whole life, across reconnects: with a fresh one per stream, the figure in every hello would be
//! measured over the few milliseconds since it was made, which says nothing about the host's load.

use hangar::domain::NodeResources;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

pub struct HostResources {
    system: System,
}

impl Default for HostResources {
    fn default() -> Self {
        Self::new()
    }
}

impl HostResources {
    pub fn new() -> Self {
        let refresh = RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram());
        HostResources { system: System::new_with_specifics(refresh) }
    }

    /// CPU usage is measured between two samples, so the first one reports what sysinfo saw since
    /// it was created.
    pub fn sample(&mut self) -> NodeResources {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cores = self.system.cpus().len() as u32;
        let used_fraction = f64::from(self.system.global_cpu_usage()) / 100.0;
        NodeResources {
            cpu_cores: cores,
            cpu_used_millis: (used_fraction * f64::from(cores) * 1000.0).round() as u64,
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.used_memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_report_this_hosts_cores_and_memory() {
        let sample = HostResources::new().sample();
        assert!(sample.cpu_cores >= 1);
        assert!(sample.memory_total_bytes > 0);
        assert!(sample.memory_used_bytes <= sample.memory_total_bytes);
    }
}
