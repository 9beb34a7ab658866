//! The IAM permission each Cloud Tasks call of this crate needs, and the role that grants it:
//! the one table that error messages and the mock server (`testing`) read.
//!
//! Sources (read 2026-12):
//! - Cloud Tasks' "Access control" page, its table of the permission each method needs
//!   (<https://cloud.google.com/tasks/docs/reference-access-control>): ListTasks, GetTask,
//!   CreateTask, DeleteTask on the queue, RunTask on the task;
//! - the v2 API reference, each method's "Authorization requires the following IAM permission
//!   on the specified resource" (<https://cloud.google.com/tasks/docs/reference/rest/v2/projects.locations.queues.tasks>):
//!   `tasks.create` on the parent queue, `tasks.get`, `tasks.delete`, `tasks.run` on the task,
//!   `tasks.list` on the queue;
//! - IAM's "Cloud Tasks roles and permissions"
//!   (<https://cloud.google.com/iam/docs/roles-permissions/cloudtasks>): which role holds which
//!   permission (enqueuer: `tasks.create`, `tasks.fullView`; viewer: `tasks.get`, `tasks.list`;
//!   taskDeleter: `tasks.delete`; taskRunner: `tasks.run`, `tasks.fullView`; `operations.get`
//!   only in Admin and Editor);
//! - IAM's "Service Accounts roles and permissions": `iam.serviceAccounts.actAs` in
//!   `roles/iam.serviceAccountUser`, needed on the account a task's OIDC token names.
//!
//! Where the sources are silent or disagree:
//! - **GetTask, DeleteTask**: the access-control page checks them on the queue, the reference
//!   on the task's name. A grant on the queue covers both.
//! - **BatchCreateTasks**: v2's reference page names no permission; v2beta3's names
//!   `cloudtasks.tasks.create` on the parent, and the IAM page has no batch permission. The
//!   table says `cloudtasks.tasks.create` on the queue.
//! - **The FULL view**: the request messages' `response_view` says `cloudtasks.tasks.fullView`
//!   "on the Task resource", `Task.View.FULL` says "on the Queue resource". A grant on the
//!   queue covers both (a task's name is under its queue's), which is where the Terraform puts
//!   it.
//! - **GetOperation**: the reference names no permission; the IAM page lists
//!   `cloudtasks.operations.get` in Admin and Editor only. An operation's name is
//!   `projects/*/locations/*/operations/*`: under the project, not under any queue, so a
//!   queue-level grant cannot cover it (ARCHITECTURE.md, "How a batch learns its result").

/// A Cloud Tasks RPC this crate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rpc {
    CreateTask,
    BatchCreateTasks,
    /// `google.longrunning.Operations/GetOperation`, polling a batch's operation.
    GetOperation,
    GetTask,
    ListTasks,
    DeleteTask,
    RunTask,
}

/// A permission and the narrowest role that grants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Requirement {
    pub(crate) permission: &'static str,
    pub(crate) role: &'static str,
}

/// What asking for `response_view = FULL` (a task's body in the answer) needs, besides the
/// call's own permission. Bulk enqueue asks for it for unnamed tasks, to pair them by content.
pub(crate) const FULL_VIEW: Requirement = Requirement {
    permission: "cloudtasks.tasks.fullView",
    role: "roles/cloudtasks.enqueuer",
};

/// What creating a task with an OIDC token needs on the token's service account.
pub(crate) const ACT_AS: Requirement = Requirement {
    permission: "iam.serviceAccounts.actAs",
    role: "roles/iam.serviceAccountUser",
};

impl Rpc {
    /// The RPC's name, as its service defines it.
    pub(crate) const fn method(self) -> &'static str {
        match self {
            Self::CreateTask => "CreateTask",
            Self::BatchCreateTasks => "BatchCreateTasks",
            Self::GetOperation => "GetOperation",
            Self::GetTask => "GetTask",
            Self::ListTasks => "ListTasks",
            Self::DeleteTask => "DeleteTask",
            Self::RunTask => "RunTask",
        }
    }

    /// The fully qualified method, as gRPC's path and OpenTelemetry's `rpc.method` name it.
    pub(crate) const fn full_method(self) -> &'static str {
        match self {
            Self::CreateTask => "google.cloud.tasks.v2.CloudTasks/CreateTask",
            Self::BatchCreateTasks => "google.cloud.tasks.v2.CloudTasks/BatchCreateTasks",
            Self::GetOperation => "google.longrunning.Operations/GetOperation",
            Self::GetTask => "google.cloud.tasks.v2.CloudTasks/GetTask",
            Self::ListTasks => "google.cloud.tasks.v2.CloudTasks/ListTasks",
            Self::DeleteTask => "google.cloud.tasks.v2.CloudTasks/DeleteTask",
            Self::RunTask => "google.cloud.tasks.v2.CloudTasks/RunTask",
        }
    }

    /// The permission the call needs on its resource (the queue, the task, or the operation),
    /// and the narrowest role that grants it.
    pub(crate) const fn requirement(self) -> Requirement {
        let (permission, role) = match self {
            Self::CreateTask | Self::BatchCreateTasks => {
                ("cloudtasks.tasks.create", "roles/cloudtasks.enqueuer")
            }
            Self::GetOperation => (
                "cloudtasks.operations.get",
                "a custom role holding only this permission, granted on the project \
                 (infrastructure/terraform: cloudTasksOperationReader), or \
                 roles/cloudtasks.editor",
            ),
            Self::GetTask => ("cloudtasks.tasks.get", "roles/cloudtasks.viewer"),
            Self::ListTasks => ("cloudtasks.tasks.list", "roles/cloudtasks.viewer"),
            Self::DeleteTask => ("cloudtasks.tasks.delete", "roles/cloudtasks.taskDeleter"),
            Self::RunTask => ("cloudtasks.tasks.run", "roles/cloudtasks.taskRunner"),
        };
        Requirement { permission, role }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The custom role's ID in the table is the one the Terraform declares, so an error's
    /// advice names a role that exists.
    #[test]
    fn operation_reader_role_is_the_terraforms() {
        let role_id = "cloudTasksOperationReader";
        let iam = include_str!("../infrastructure/terraform/iam.tf");
        assert!(
            iam.contains(&format!("role_id     = \"{role_id}\"")),
            "iam.tf declares no custom role {role_id}"
        );
        assert!(Rpc::GetOperation.requirement().role.contains(role_id));
    }
}
