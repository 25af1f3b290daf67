//! The bridge between each aggregate's event enum and the published wire catalogue
//! ([`event_schemas::Event`]).
//!
//! A domain event enum wraps the *current* payload types of `event-schemas`, one variant per
//! event type of its stream, so converting to and from the wire is a move, never a mapping
//! that could drift. [`domain_events!`] writes the enum and its four impls from one table:
//! `DomainEvent` (wire `event_type` and current `schema_version`), `From<_> for Event`,
//! `TryFrom<Event>` (a foreign event is [`event_schemas::UnexpectedEvent`]) and `kind()`.

/// Declares a domain event enum for aggregate `$aggregate`:
///
/// ```text
/// domain_events! {
///     /// Docs.
///     pub enum UserEvent for User {
///         /// Docs.
///         Registered(UserRegisteredV3) = UserRegistered,
///     }
/// }
/// ```
///
/// Each line is `DomainVariant(CurrentPayload) = WireVariant`, the last naming the variant of
/// [`event_schemas::Event`] (and [`event_schemas::EventKind`]); a payload type that is not
/// that variant's current type does not compile.
macro_rules! domain_events {
    (
        $(#[$attr:meta])*
        pub enum $name:ident for $aggregate:ty {
            $( $(#[$vattr:meta])* $variant:ident($payload:ty) = $wire:ident, )+
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, PartialEq, Eq, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $( $(#[$vattr])* $variant($payload), )+
        }

        impl $name {
            /// The wire type of this event.
            pub const fn kind(&self) -> ::event_schemas::EventKind {
                match self {
                    $( Self::$variant(_) => ::event_schemas::EventKind::$wire, )+
                }
            }
        }

        impl ::cqrs_es::DomainEvent for $name {
            fn event_type(&self) -> String {
                self.kind().as_str().to_owned()
            }

            fn event_version(&self) -> String {
                self.kind().current_version().to_string()
            }
        }

        impl From<$name> for ::event_schemas::Event {
            fn from(event: $name) -> Self {
                match event {
                    $( $name::$variant(payload) => ::event_schemas::Event::$wire(payload), )+
                }
            }
        }

        impl TryFrom<::event_schemas::Event> for $name {
            type Error = ::event_schemas::UnexpectedEvent;

            fn try_from(event: ::event_schemas::Event) -> Result<Self, Self::Error> {
                match event {
                    $( ::event_schemas::Event::$wire(payload) => Ok($name::$variant(payload)), )+
                    other => Err(::event_schemas::UnexpectedEvent {
                        event_type: other.event_type(),
                        stream_type: <$aggregate as ::cqrs_es::Aggregate>::TYPE,
                    }),
                }
            }
        }
    };
}

pub(crate) use domain_events;

#[cfg(test)]
pub(crate) mod testing {
    //! One check of the wire bridge, run by every aggregate's tests.

    use cqrs_es::{Aggregate, DomainEvent};
    use event_schemas::{Event, UnexpectedEvent};

    /// Asserts that each of `events` (one per variant, please) converts to the wire event of
    /// its type, survives encode/decode unchanged, converts back, belongs to `A`'s stream, and
    /// that `foreign` (an event of another stream) is rejected with [`UnexpectedEvent`].
    pub(crate) fn assert_wire_round_trip<A>(events: Vec<A::Event>, foreign: Event)
    where
        A: Aggregate,
        A::Event: Into<Event> + TryFrom<Event, Error = UnexpectedEvent>,
    {
        assert!(!events.is_empty());
        for event in events {
            let wire: Event = event.clone().into();
            assert_eq!(wire.event_type(), event.event_type());
            assert_eq!(wire.schema_version().to_string(), event.event_version());
            assert_eq!(
                wire.kind().stream_type(),
                A::TYPE,
                "{event:?} is on the wrong stream"
            );

            let payload = wire.encode().unwrap_or_else(|e| panic!("{e}"));
            let decoded = Event::decode(wire.event_type(), wire.schema_version(), payload)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decoded, wire);

            let back = A::Event::try_from(decoded).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, event);
        }

        let foreign_type = foreign.event_type();
        match A::Event::try_from(foreign) {
            Err(UnexpectedEvent {
                event_type,
                stream_type,
            }) => {
                assert_eq!(event_type, foreign_type);
                assert_eq!(stream_type, A::TYPE);
            }
            Ok(event) => panic!("a `{foreign_type}` event became {event:?}"),
        }
    }
}
