//! What the checker reports: the public [`Incompatibility`] and its stable [`IncompatibilityKind`],
//! plus the internal [`Finding`] the walker produces before it knows which side is "new".

use std::fmt;

use super::node::Loc;

/// One reason why a candidate schema is not compatible with an earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// JSON pointer into the NEW (candidate) schema where the problem is. When the problem is
    /// something the new schema lacks (a removed property, say), this points at the closest
    /// enclosing location that does exist. For [`check_reader_accepts_writer`] it points into
    /// the reader. Inside a schema reached through an external `$ref`, it points at that `$ref`
    /// and the message names the location inside the referenced document.
    ///
    /// [`check_reader_accepts_writer`]: super::check_reader_accepts_writer
    pub pointer: String,
    /// Stable machine-readable classification (see [`IncompatibilityKind::code`]).
    pub kind: IncompatibilityKind,
    /// Human-readable explanation, naming both schemas and the offending values.
    pub message: String,
    /// The registered version this problem was found against; `None` for a direct
    /// reader/writer comparison.
    pub against_version: Option<u32>,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        write!(f, "{} at {}: {}", self.kind, pointer, self.message)
    }
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, inverse $inv:ident; )*) => {
        /// Stable classification of an incompatibility.
        ///
        /// Names describe the change from the OLD schema to the NEW one: `RequiredAdded` means
        /// the new schema requires a property the old one did not. A FORWARD check finds the
        /// mirror image of a BACKWARD problem, so it reports the mirrored name
        /// (`RequiredRemoved`). Kinds without a direction (`UnresolvedRef`, ...) mirror to
        /// themselves. New kinds may be added; existing codes never change meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum IncompatibilityKind {
            $( $(#[$doc])* $name, )*
        }

        impl IncompatibilityKind {
            /// The UPPER_SNAKE code for APIs and logs (`REQUIRED_ADDED`).
            pub fn code(self) -> &'static str {
                match self { $( IncompatibilityKind::$name => $code, )* }
            }

            /// The same problem seen with the roles of old and new swapped.
            pub(crate) fn mirrored(self) -> Self {
                match self { $( IncompatibilityKind::$name => IncompatibilityKind::$inv, )* }
            }
        }
    };
}

kinds! {
    /// The new schema accepts fewer JSON types (including `integer` where `number` was allowed).
    TypeNarrowed = "TYPE_NARROWED", inverse TypeWidened;
    /// The new schema accepts JSON types the old one rejected.
    TypeWidened = "TYPE_WIDENED", inverse TypeNarrowed;
    /// `enum`/`const` lost a value, was added, or a value allowed by the old enum is now rejected.
    EnumNarrowed = "ENUM_NARROWED", inverse EnumWidened;
    /// `enum`/`const` gained a value or was removed.
    EnumWidened = "ENUM_WIDENED", inverse EnumNarrowed;
    /// A property became required.
    RequiredAdded = "REQUIRED_ADDED", inverse RequiredRemoved;
    /// A property is no longer required.
    RequiredRemoved = "REQUIRED_REMOVED", inverse RequiredAdded;
    /// A constrained property was declared where the old, open model allowed any value.
    PropertyAddedToOpenModel = "PROPERTY_ADDED_TO_OPEN_MODEL", inverse PropertyRemovedFromOpenModel;
    /// A constrained property was dropped and the new, open model now allows any value for it.
    PropertyRemovedFromOpenModel = "PROPERTY_REMOVED_FROM_OPEN_MODEL", inverse PropertyAddedToOpenModel;
    /// A property was dropped from a closed model, so data carrying it is now rejected.
    PropertyRemovedFromClosedModel = "PROPERTY_REMOVED_FROM_CLOSED_MODEL", inverse PropertyAddedToClosedModel;
    /// A property was added to a model that readers of the old schema keep closed.
    PropertyAddedToClosedModel = "PROPERTY_ADDED_TO_CLOSED_MODEL", inverse PropertyRemovedFromClosedModel;
    /// Undeclared properties are restricted more (`additionalProperties` or
    /// `unevaluatedProperties` became `false` or a narrower schema).
    AdditionalPropertiesNarrowed = "ADDITIONAL_PROPERTIES_NARROWED", inverse AdditionalPropertiesWidened;
    /// Undeclared properties are allowed more than before.
    AdditionalPropertiesWidened = "ADDITIONAL_PROPERTIES_WIDENED", inverse AdditionalPropertiesNarrowed;
    /// `minProperties` was added or raised.
    MinPropertiesIncreased = "MIN_PROPERTIES_INCREASED", inverse MinPropertiesDecreased;
    /// `minProperties` was lowered or removed.
    MinPropertiesDecreased = "MIN_PROPERTIES_DECREASED", inverse MinPropertiesIncreased;
    /// `maxProperties` was added or lowered.
    MaxPropertiesDecreased = "MAX_PROPERTIES_DECREASED", inverse MaxPropertiesIncreased;
    /// `maxProperties` was raised or removed.
    MaxPropertiesIncreased = "MAX_PROPERTIES_INCREASED", inverse MaxPropertiesDecreased;
    /// The lower numeric bound (`minimum`/`exclusiveMinimum`) was added, raised or made exclusive.
    MinimumIncreased = "MINIMUM_INCREASED", inverse MinimumDecreased;
    /// The lower numeric bound was lowered or removed.
    MinimumDecreased = "MINIMUM_DECREASED", inverse MinimumIncreased;
    /// The upper numeric bound (`maximum`/`exclusiveMaximum`) was added, lowered or made exclusive.
    MaximumDecreased = "MAXIMUM_DECREASED", inverse MaximumIncreased;
    /// The upper numeric bound was raised or removed.
    MaximumIncreased = "MAXIMUM_INCREASED", inverse MaximumDecreased;
    /// `multipleOf` changed so that some numbers the writer allows are no longer multiples.
    MultipleOfChanged = "MULTIPLE_OF_CHANGED", inverse MultipleOfChanged;
    /// `minLength` was added or raised.
    MinLengthIncreased = "MIN_LENGTH_INCREASED", inverse MinLengthDecreased;
    /// `minLength` was lowered or removed.
    MinLengthDecreased = "MIN_LENGTH_DECREASED", inverse MinLengthIncreased;
    /// `maxLength` was added or lowered.
    MaxLengthDecreased = "MAX_LENGTH_DECREASED", inverse MaxLengthIncreased;
    /// `maxLength` was raised or removed.
    MaxLengthIncreased = "MAX_LENGTH_INCREASED", inverse MaxLengthDecreased;
    /// `pattern` was added or changed (patterns are only compared for identity).
    PatternChanged = "PATTERN_CHANGED", inverse PatternChanged;
    /// `format` was added or changed.
    FormatChanged = "FORMAT_CHANGED", inverse FormatChanged;
    /// `minItems` was added or raised.
    MinItemsIncreased = "MIN_ITEMS_INCREASED", inverse MinItemsDecreased;
    /// `minItems` was lowered or removed.
    MinItemsDecreased = "MIN_ITEMS_DECREASED", inverse MinItemsIncreased;
    /// Fewer array items are allowed (`maxItems` added or lowered, or a closed tuple shortened).
    MaxItemsDecreased = "MAX_ITEMS_DECREASED", inverse MaxItemsIncreased;
    /// More array items are allowed.
    MaxItemsIncreased = "MAX_ITEMS_INCREASED", inverse MaxItemsDecreased;
    /// `uniqueItems: true` was added.
    UniqueItemsAdded = "UNIQUE_ITEMS_ADDED", inverse UniqueItemsRemoved;
    /// `uniqueItems: true` was removed.
    UniqueItemsRemoved = "UNIQUE_ITEMS_REMOVED", inverse UniqueItemsAdded;
    /// `contains` was added or narrowed.
    ContainsAdded = "CONTAINS_ADDED", inverse ContainsRemoved;
    /// `contains` was removed or widened.
    ContainsRemoved = "CONTAINS_REMOVED", inverse ContainsAdded;
    /// Data can fall outside every branch of the reading `anyOf`/`oneOf`.
    NoMatchingBranch = "NO_MATCHING_BRANCH", inverse NoMatchingBranch;
    /// The checker cannot prove that data matches exactly one branch of the reading `oneOf`.
    OneOfAmbiguous = "ONE_OF_AMBIGUOUS", inverse OneOfAmbiguous;
    /// The checker cannot prove that data never matches the reading schema's `not`.
    NotUnproven = "NOT_UNPROVEN", inverse NotUnproven;
    /// The checker cannot tell whether a `patternProperties` regex matches a property name.
    PatternPropertiesUnproven = "PATTERN_PROPERTIES_UNPROVEN", inverse PatternPropertiesUnproven;
    /// A keyword the checker only compares for identity (`if`, `propertyNames`, ...) differs.
    UnsupportedKeyword = "UNSUPPORTED_KEYWORD", inverse UnsupportedKeyword;
    /// A keyword whose meaning depends on its sibling keywords (`unevaluatedItems` on
    /// `prefixItems`/`items`/`contains`/in-place applicators, `maxContains` on `contains`)
    /// cannot be compared on its own, and those siblings differ between the two schemas.
    UnprovableDependentKeyword = "UNPROVABLE_DEPENDENT_KEYWORD", inverse UnprovableDependentKeyword;
    /// A `$ref` could not be resolved, locally or through the registry.
    UnresolvedRef = "UNRESOLVED_REF", inverse UnresolvedRef;
    /// A value where a schema was expected (neither an object nor a boolean).
    InvalidSchema = "INVALID_SCHEMA", inverse InvalidSchema;
    /// The comparison exceeded the checker's depth or branch-combination limits.
    TooComplex = "TOO_COMPLEX", inverse TooComplex;
    /// The `x-kakehashi-pii` annotation of some data location was added, removed or changed,
    /// which changes how that value is pseudonymized at delivery.
    PiiAnnotationChanged = "PII_ANNOTATION_CHANGED", inverse PiiAnnotationChanged;
    /// The subject's schema type changed (JSON Schema ↔ protobuf).
    SchemaTypeChanged = "SCHEMA_TYPE_CHANGED", inverse SchemaTypeChanged;
    /// Protobuf: a field number now carries a field of another name (renamed or reused), or a
    /// new field took a number the other version reserved.
    FieldNumberReused = "FIELD_NUMBER_REUSED", inverse FieldNumberReused;
    /// Protobuf: a field's type changed outside its wire-compatible group, or to another
    /// message or enum type.
    FieldTypeChanged = "FIELD_TYPE_CHANGED", inverse FieldTypeChanged;
    /// Protobuf: a field's type changed within its wire group but its JSON form differs
    /// (bool ↔ integer, enum ↔ integer).
    FieldJsonTypeChanged = "FIELD_JSON_TYPE_CHANGED", inverse FieldJsonTypeChanged;
    /// Protobuf: singular ↔ repeated ↔ map, or `required` added or removed.
    FieldCardinalityChanged = "FIELD_CARDINALITY_CHANGED", inverse FieldCardinalityChanged;
    /// Protobuf: the reader tracks presence (`optional`) of a field the writer does not.
    FieldPresenceChanged = "FIELD_PRESENCE_CHANGED", inverse FieldPresenceChanged;
    /// Protobuf: the reader has a field in a `oneof` the writer did not have it in.
    FieldOneofChanged = "FIELD_ONEOF_CHANGED", inverse FieldOneofChanged;
    /// Protobuf: a field was removed without its number being reserved.
    FieldRemovedNotReserved = "FIELD_REMOVED_NOT_RESERVED", inverse FieldRemovedNotReserved;
    /// Protobuf: an enum value was removed without its number being reserved.
    EnumValueRemovedNotReserved = "ENUM_VALUE_REMOVED_NOT_RESERVED", inverse EnumValueRemovedNotReserved;
    /// Protobuf: an enum number now has another name (its JSON form changed).
    EnumValueRenamed = "ENUM_VALUE_RENAMED", inverse EnumValueRenamed;
    /// Protobuf: a field kept its name and number but its JSON name (`json_name`) changed.
    JsonNameChanged = "JSON_NAME_CHANGED", inverse JsonNameChanged;
    /// Protobuf: the payload message's package changed.
    PackageChanged = "PACKAGE_CHANGED", inverse PackageChanged;
    /// Protobuf: the payload message has another name.
    PayloadMessageRenamed = "PAYLOAD_MESSAGE_RENAMED", inverse PayloadMessageRenamed;
}

impl fmt::Display for IncompatibilityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A problem found by the directional walk, before it is attributed to the new schema.
///
/// The walk always asks "does the reader accept everything the writer allows?", so `kind` is
/// named as if the reader were the new schema; [`super::check`] mirrors it for FORWARD checks.
/// Both locations are kept because which one is "the new schema" depends on the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// Where in the reading schema the stricter constraint lives.
    pub reader: Loc,
    /// The corresponding place in the writing schema (closest existing location).
    pub writer: Loc,
    /// Classification, named from the reader's side.
    pub kind: IncompatibilityKind,
    /// Readable explanation using the role names of [`Roles`].
    pub message: String,
}

/// Names of the two schemas as they appear in messages ("the new schema", "version 3").
#[derive(Debug, Clone)]
pub(crate) struct Roles {
    /// Name of the schema whose consumers read the data.
    pub reader: String,
    /// Name of the schema the data was written with.
    pub writer: String,
}

impl Roles {
    /// Role names for a direct reader/writer comparison.
    pub fn generic() -> Self {
        Roles { reader: "the reader schema".to_owned(), writer: "the writer schema".to_owned() }
    }
}
