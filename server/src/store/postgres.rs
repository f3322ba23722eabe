//! PostgreSQL store: several controllers share one database.

use super::*;

pub struct PostgresStore;

impl PostgresStore {
    pub async fn open(_url: &str) -> Result<Self, StoreError> {
        Err(StoreError::Unavailable("not implemented yet".into()))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        unimplemented!()
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        unimplemented!()
    }
    async fn attach_node(&self, _: NodeRegistration, _: &str, _: DateTime<Utc>) -> Result<Node, StoreError> {
        unimplemented!()
    }
    async fn update_node(&self, _: &str, _: NodeUpdate, _: UpdateCondition) -> Result<Option<Node>, StoreError> {
        unimplemented!()
    }
    async fn get_node(&self, _: &str) -> Result<Option<Node>, StoreError> {
        unimplemented!()
    }
    async fn list_nodes(
        &self,
        _: &NodeFilter,
        _: Option<Revision>,
        _: Option<&str>,
        _: usize,
    ) -> Result<NodePage, StoreError> {
        unimplemented!()
    }
    async fn node_changes_since(&self, _: Revision, _: usize) -> Result<Vec<NodeChange>, StoreError> {
        unimplemented!()
    }
    async fn compact(&self, _: Retention, _: DateTime<Utc>) -> Result<Revision, StoreError> {
        unimplemented!()
    }
    async fn shared_secret(&self, _: &str) -> Result<Vec<u8>, StoreError> {
        unimplemented!()
    }
}
