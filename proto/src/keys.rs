//! Partition keys derived from the signal model.
//!
//! The key decides which Kafka partition, and so which correlator instance, sees a signal: every
//! signal about one workload must carry the same key whatever source it came from.

use crate::v1::{Image, Platform, Signal, WorkloadKey, WorkloadResolution};

impl WorkloadKey {
    /// Returns the Kafka partition key of this workload.
    ///
    /// The controller kind is left out on purpose: sources disagree on it (a Falco alert names a
    /// pod, from which only the controller name can be derived), and a key that changed with the
    /// source would split one workload's evidence across partitions. Unknown parts are written
    /// as `_`.
    ///
    /// Kubernetes: `k8s/<cluster>/<namespace>/<name>`. ECS: `ecs/<account>/<region>/<family>`.
    /// A workload known only by a container id: `container/<first 12 hex>`.
    pub fn partition_key(&self) -> String {
        fn part(value: &str) -> &str {
            if value.is_empty() { "_" } else { value }
        }
        if self.resolution == WorkloadResolution::Container as i32 {
            let short = self.name.get(..12).unwrap_or(&self.name);
            return format!("container/{short}");
        }
        match Platform::try_from(self.platform).unwrap_or(Platform::Unspecified) {
            Platform::Ecs => {
                format!(
                    "ecs/{}/{}/{}",
                    part(&self.account),
                    part(&self.region),
                    part(&self.name)
                )
            }
            Platform::Kubernetes | Platform::Unspecified => format!(
                "k8s/{}/{}/{}",
                part(&self.cluster),
                part(&self.namespace),
                part(&self.name)
            ),
        }
    }
}

impl Image {
    /// Returns the key of this image in the image-facts table: the full reference with tag and
    /// digest, so that compaction keeps one record per distinct push and the history of every
    /// tag's digests survives.
    pub fn table_key(&self) -> &str {
        &self.reference
    }
}

impl Signal {
    /// Returns the partition key of the signal's workload, or of its image when it names no
    /// workload (registry pushes), or `_` when it names neither.
    pub fn partition_key(&self) -> String {
        match (&self.workload, &self.image) {
            (Some(workload), _)
                if workload.resolution != WorkloadResolution::None as i32
                    && workload.resolution != WorkloadResolution::Unspecified as i32 =>
            {
                workload.partition_key()
            }
            (_, Some(image)) if !image.repository.is_empty() => {
                format!("image/{}/{}", image.registry, image.repository)
            }
            _ => "_".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_key_leaves_kind_out() {
        let deployment = WorkloadKey {
            platform: Platform::Kubernetes as i32,
            cluster: "prod".into(),
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            resolution: WorkloadResolution::Explicit as i32,
            ..Default::default()
        };
        let guessed = WorkloadKey {
            kind: String::new(),
            resolution: WorkloadResolution::PodName as i32,
            ..deployment.clone()
        };
        assert_eq!(deployment.partition_key(), "k8s/prod/shop/web");
        assert_eq!(deployment.partition_key(), guessed.partition_key());
    }

    #[test]
    fn unknown_parts_are_underscores() {
        let key = WorkloadKey {
            platform: Platform::Ecs as i32,
            name: "miner".into(),
            resolution: WorkloadResolution::Explicit as i32,
            ..Default::default()
        };
        assert_eq!(key.partition_key(), "ecs/_/_/miner");
    }

    #[test]
    fn container_key_uses_short_id() {
        let key = WorkloadKey {
            name: "3ad7b26ded6d8e7b0000000000000000".into(),
            resolution: WorkloadResolution::Container as i32,
            ..Default::default()
        };
        assert_eq!(key.partition_key(), "container/3ad7b26ded6d");
    }
}
