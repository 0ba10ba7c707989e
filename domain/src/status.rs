//! The states of runs, jobs, provider calls, instructions and webhook
//! deliveries: one enum each, with the one string each state is stored and
//! answered as. Usable directly in queries (`Column::Status.eq(JobStatus::Running)`)
//! and comparisons with a stored string (`job.status == JobStatus::Done`).

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and answered form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(s: $name) -> String {
                s.as_str().to_string()
            }
        }

        impl From<$name> for sea_orm::Value {
            fn from(s: $name) -> sea_orm::Value {
                s.as_str().into()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }
    };
}

status_enum!(
    /// A run, from planning to its end.
    RunStatus {
        /// A dry run: planned and estimated, never executed.
        Planned => "planned",
        Queued => "queued",
        Running => "running",
        Done => "done",
        Failed => "failed",
        /// Some jobs done, some not.
        Partial => "partial",
        Canceled => "canceled",
    }
);

impl RunStatus {
    /// Nothing more will happen to a run in this state.
    pub fn is_terminal(text: &str) -> bool {
        matches!(
            Self::parse(text),
            Some(Self::Done | Self::Failed | Self::Partial | Self::Canceled | Self::Planned)
        )
    }
}

status_enum!(
    /// A job: one scene at one stage.
    JobStatus {
        /// A dry run's job.
        Planned => "planned",
        /// Waiting for its parent stage.
        Blocked => "blocked",
        /// Ready to be leased.
        Pending => "pending",
        Running => "running",
        Done => "done",
        Failed => "failed",
        Canceled => "canceled",
        /// Its parent failed or was canceled.
        Skipped => "skipped",
    }
);

impl JobStatus {
    /// Nothing more will happen to a job in this state.
    pub fn is_terminal(text: &str) -> bool {
        matches!(
            Self::parse(text),
            Some(Self::Done | Self::Failed | Self::Canceled | Self::Skipped | Self::Planned)
        )
    }
}

status_enum!(
    /// A provider call (one candidate's generation, or one paid pass).
    CallStatus {
        /// Recorded and reserved; in flight once `sent_at` is set.
        Pending => "pending",
        Succeeded => "succeeded",
        /// The last attempt was refused or not sent (nothing billed).
        Failed => "failed",
        /// The last attempt was sent and its answer lost or unusable:
        /// possibly billed.
        Unknown => "unknown",
        /// Given up because the run or job was canceled (nothing billed).
        Canceled => "canceled",
    }
);

status_enum!(
    /// A candidate, once decided.
    CandidateStatus {
        Done => "done",
        /// Its call gave up (nothing stored).
        Failed => "failed",
        /// Stored, but the output guard found hard failures (archived).
        FailedOutputGuard => "failed_output_guard",
    }
);

status_enum!(
    /// An agent instruction.
    InstructionStatus {
        Pending => "pending",
        Confirmed => "confirmed",
        /// Taken by the agent worker.
        Running => "running",
        Done => "done",
        Failed => "failed",
        Canceled => "canceled",
    }
);

status_enum!(
    /// A webhook delivery.
    DeliveryStatus {
        Pending => "pending",
        Delivered => "delivered",
        /// Attempts exhausted.
        Failed => "failed",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_text() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(*s));
        }
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(*s));
        }
        for s in CallStatus::ALL {
            assert_eq!(CallStatus::parse(s.as_str()), Some(*s));
        }
        assert!(RunStatus::is_terminal("partial") && !RunStatus::is_terminal("running"));
        assert!(JobStatus::is_terminal("skipped") && !JobStatus::is_terminal("blocked"));
        let stored: String = "done".into();
        assert!(stored == JobStatus::Done && "running" == JobStatus::Running);
    }
}
