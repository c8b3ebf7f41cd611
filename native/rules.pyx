# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Native twin of ``RuleTablePy.match`` (proxy/rules.py): the same answer, computed in C.

Owns nothing of the matching rules themselves: ``RuleTablePy.match`` is the specification and
this module repeats it step for step over the compiled attributes documented on RuleTablePy
(built once in Python); tests/unit/test_native_parity.py holds the two together.

Strategy: ``build(table)`` turns the compiled attributes into typed objects once per table, so
``match`` does dict probes on the same dicts with less work around them:

* a Host that is already lower-case ASCII without port or trailing dot (the usual one) is used
  as is, without a copy;
* a dict is probed only with a slice whose length, first and last character some key of it
  has (prefix rules, wildcard domains, regex prefixes): slicing and hashing a string is most
  of a probe's cost, and most probes miss;
* a regex is searched only when the subject holds the literal text every match of it must hold
  (its literal prefix after ``^``, its longest literal run), read from the pattern's parse tree
  (``re._parser``); a pattern whose tree is not understood, or that is case-insensitive, is
  always searched, so the filter only skips searches that would fail. Many regexes with a
  literal prefix (``~^api12-...`` domains) are indexed by it, so a Host is not tried against
  each ``~regex`` domain in turn.

Must not know config, targets or backends, and imports nothing from ``proxy``: proxy.rules
loads it (through proxy._native) while still initialising.
"""

import re

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef extern from "Python.h":
    # CPython's own accessors (non-limited API): read a code point without an object
    int PyUnicode_KIND(object text)
    void *PyUnicode_DATA(object text)
    Py_UCS4 PyUnicode_READ(int kind, void *data, Py_ssize_t index)


try:  # CPython's own regex parser; without it every regex is simply searched
    from re import _constants as _sre_constants
    from re import _parser as _sre_parser
except ImportError:  # pragma: no cover - a Python whose re internals moved
    _sre_parser = None

cdef tuple NO_MATCH = (-1, False)
cdef enum:
    SHORT = 256  # key lengths under this are found through a table (_Lengths.slots)


# --- key shapes ------------------------------------------------------------------------------


cdef inline unsigned long long _bit(Py_UCS4 ch):
    return 1ULL << (<unsigned int>ch & 63)


@cython.final
cdef class _Lengths:
    """The shape of a dict's keys: which slices of a subject can be keys at all.

    Per distinct key length (``ascending[k]``) a bit set of the keys' first characters and
    one of their last characters (by code point modulo 64): a slice whose length no key has,
    or whose first or last character no key of that length has, is not looked up, which
    saves slicing, hashing and probing most of the misses.
    """

    cdef Py_ssize_t count
    cdef Py_ssize_t *ascending
    cdef unsigned long long *firsts
    cdef unsigned long long *lasts
    cdef signed char *slots  # length -> k for lengths under SHORT, -1 if none; see find()

    def __cinit__(self, keys, bint by_length=False):
        cdef Py_ssize_t k, length
        lengths = sorted({len(key) for key in keys})
        self.count = len(lengths)
        self.slots = NULL
        size = max(self.count, 1)
        self.ascending = <Py_ssize_t *>PyMem_Malloc(size * sizeof(Py_ssize_t))
        self.firsts = <unsigned long long *>PyMem_Malloc(size * sizeof(unsigned long long))
        self.lasts = <unsigned long long *>PyMem_Malloc(size * sizeof(unsigned long long))
        if self.ascending == NULL or self.firsts == NULL or self.lasts == NULL:
            raise MemoryError()
        if by_length and self.count < 127:  # else find() searches ``ascending``
            self.slots = <signed char *>PyMem_Malloc(SHORT)
            if self.slots == NULL:
                raise MemoryError()
            for length in range(SHORT):
                self.slots[length] = -1
        for k in range(self.count):
            self.ascending[k] = lengths[k]
            self.firsts[k] = 0 if lengths[k] else ~0ULL  # the empty key fits any slice
            self.lasts[k] = self.firsts[k]
            if self.slots != NULL and lengths[k] < SHORT:
                self.slots[lengths[k]] = <signed char>k
        slot = {length: k for k, length in enumerate(lengths)}
        for key in keys:
            if key:
                k = slot[len(key)]
                self.firsts[k] |= _bit(ord(key[0]))
                self.lasts[k] |= _bit(ord(key[len(key) - 1]))

    def __dealloc__(self):
        PyMem_Free(self.ascending)
        PyMem_Free(self.firsts)
        PyMem_Free(self.lasts)
        PyMem_Free(self.slots)

    cdef inline Py_ssize_t find(self, Py_ssize_t length):
        """k of a key length, or -1 when no key has it."""
        cdef Py_ssize_t k
        if self.slots != NULL and length < SHORT:
            return self.slots[length]
        for k in range(self.count):
            if self.ascending[k] == length:
                return k
        return -1

    cdef inline bint admits(self, Py_ssize_t k, Py_UCS4 first, Py_UCS4 last):
        """Whether a slice with these end characters may be a key of length ascending[k]."""
        return (self.firsts[k] & _bit(first)) != 0 and (self.lasts[k] & _bit(last)) != 0


# --- the literal prefilter -------------------------------------------------------------------


def literal_filter(pattern):
    """``(prefix, required)`` of a compiled str pattern: every match of ``pattern.search(s)``
    has ``s.startswith(prefix)`` and ``required in s``; "" where nothing is known."""
    if _sre_parser is None or not isinstance(pattern.pattern, str):
        return "", ""
    flags = pattern.flags
    if flags & re.IGNORECASE:  # case folding (k matches the Kelvin sign): no literal is safe
        return "", ""
    try:
        items = list(_sre_parser.parse(pattern.pattern, flags))
    except Exception:  # noqa: BLE001 - re.compile accepted it; no filter is always safe
        return "", ""
    LITERAL, AT = _sre_constants.LITERAL, _sre_constants.AT
    start = 0
    # "^" pins a search to position 0 unless MULTILINE lets it follow any newline; "\A" always
    if items and items[0][0] == AT and (
            items[0][1] == _sre_constants.AT_BEGINNING_STRING
            or (items[0][1] == _sre_constants.AT_BEGINNING and not flags & re.MULTILINE)):
        start = 1
    # top-level items are concatenated, so each run of LITERAL items is text every match holds
    runs = []
    run = []
    run_start = start
    for position in range(start, len(items) + 1):
        if position < len(items) and items[position][0] == LITERAL:
            if not run:
                run_start = position
            run.append(chr(items[position][1]))
        elif run:
            runs.append((run_start, "".join(run)))
            run = []
    prefix = ""
    if start == 1 and runs and runs[0][0] == 1:
        prefix = runs.pop(0)[1]
    required = ""
    for _, text in runs:  # the longest run tells most; the first of equal ones
        if len(text) > len(required):
            required = text
    return prefix, required


cdef dict _FILTERS = {}  # (pattern text, flags) -> literal_filter(): tables repeat patterns
cdef Py_ssize_t _FILTERS_MAX = 4096


@cython.final
cdef class _Regex:
    """One regex rule or domain: its search, what it selects, its literal prefilter."""

    cdef object search
    cdef object target  # the rule index or domain id, as the compiled table holds it
    cdef str prefix
    cdef str required

    def __cinit__(self, pattern, target):
        key = (pattern.pattern, pattern.flags)
        found = _FILTERS.get(key)
        if found is None:
            found = literal_filter(pattern)
            if len(_FILTERS) >= _FILTERS_MAX:
                _FILTERS.clear()
            _FILTERS[key] = found
        self.search = pattern.search
        self.target = target
        self.prefix, self.required = found


cdef object _scan(tuple regexes, str subject):
    """The target of the first regex in order that finds itself in ``subject``, or None."""
    cdef _Regex regex
    for regex in regexes:
        if regex.prefix and not subject.startswith(regex.prefix):
            continue
        if regex.required and regex.required not in subject:
            continue
        if regex.search(subject) is not None:
            return regex.target
    return None


cdef Py_ssize_t _INDEX_MIN = 8  # fewer regexes than this are simply scanned in order


@cython.final
cdef class _Regexes:
    """Regexes in config order; ``first_hit`` is the target of the first that finds itself.

    From ``_INDEX_MIN`` regexes on, those with a literal prefix are also indexed by it: a
    subject then costs one dict probe per distinct prefix length instead of one test per
    regex, and only the regexes whose prefix it starts with, and those with none, are tried,
    in config order.
    """

    cdef tuple regexes  # every _Regex, in config order
    cdef tuple loose  # those without a prefix, in order (every one when not indexed)
    cdef dict by_prefix  # prefix -> its regexes in order; None when not indexed
    cdef _Lengths lengths  # of the prefixes

    def __cinit__(self, tuple compiled):
        cdef _Regex regex
        self.regexes = tuple([_Regex(pattern, target) for pattern, target in compiled])
        self.loose = self.regexes
        self.by_prefix = None
        by_prefix = {}
        if len(self.regexes) >= _INDEX_MIN:
            for regex in self.regexes:
                if regex.prefix:
                    by_prefix.setdefault(regex.prefix, []).append(regex)
        if by_prefix:
            self.by_prefix = {prefix: tuple(found) for prefix, found in by_prefix.items()}
            self.loose = tuple([regex for regex in self.regexes if not regex.prefix])
            self.lengths = _Lengths(by_prefix)

    cdef object first_hit(self, str subject):
        if self.by_prefix is None:
            return _scan(self.regexes, subject)
        cdef Py_ssize_t size = len(subject), k, length
        cdef int kind = PyUnicode_KIND(subject)
        cdef void *data = PyUnicode_DATA(subject)
        cdef list hits = None
        for k in range(self.lengths.count):
            length = self.lengths.ascending[k]
            if length > size:
                break
            if length and not self.lengths.admits(k, PyUnicode_READ(kind, data, 0),
                                                  PyUnicode_READ(kind, data, length - 1)):
                continue
            found = self.by_prefix.get(subject[:length] if length < size else subject)
            if found is not None:
                if hits is None:
                    hits = [found]
                else:
                    hits.append(found)
        if hits is None:
            return _scan(self.loose, subject)
        if len(hits) == 1 and not self.loose:
            return _scan(<tuple>hits[0], subject)
        # regexes of several prefixes (or with none) may hit: the first in config order wins
        cdef _Regex regex
        candidates = set(self.loose)
        for found in hits:
            candidates.update(<tuple>found)
        return _scan(tuple([regex for regex in self.regexes if regex in candidates]), subject)


# --- hosts -----------------------------------------------------------------------------------


cdef str _normalize_host(str host_header):
    """proxy.rules.normalize_host, with a no-copy path for an already normal host."""
    cdef Py_ssize_t size = len(host_header), i
    cdef int kind = PyUnicode_KIND(host_header)
    cdef void *data = PyUnicode_DATA(host_header)
    cdef Py_UCS4 ch
    for i in range(size):
        ch = PyUnicode_READ(kind, data, i)
        if ch >= 128 or ch == u':' or u'A' <= ch <= u'Z':
            break
    else:
        if size == 0 or PyUnicode_READ(kind, data, size - 1) != u'.':
            return host_header
    # the general case, as normalize_host does it
    cdef str host = host_header.lower()
    cdef Py_ssize_t end
    if u':' in host:
        if host[0] == u'[':
            end = host.find(u']')
            if end >= 0:
                host = host[:end + 1]
        elif host.count(u':') == 1:
            host = host[:host.index(u':')]
    if len(host) and host[len(host) - 1] == u'.':
        host = host[:len(host) - 1]
    return host


# --- one domain's urls -----------------------------------------------------------------------


@cython.final
cdef class _Domain:
    """A ``DomainRules`` tuple: the same dicts, prefix lengths in C, regexes prefiltered."""

    cdef dict exact
    cdef dict prefixes
    cdef dict redirects
    cdef _Regexes regexes
    cdef _Lengths lengths

    def __cinit__(self, tuple rules):
        exact, prefixes, lengths, redirects, regexes = rules
        self.exact = exact
        self.prefixes = prefixes
        self.redirects = redirects
        self.regexes = _Regexes(regexes)
        self.lengths = _Lengths(prefixes)

    cdef tuple match(self, str path):
        # the steps and their reasons are RuleTablePy.match's
        found = self.exact.get(path)
        if found is not None:
            return (found, False)
        cdef Py_ssize_t size = len(path), k = self.lengths.count - 1, length
        cdef int kind = PyUnicode_KIND(path)
        cdef void *data = PyUnicode_DATA(path)
        while k >= 0 and self.lengths.ascending[k] > size:  # the longest prefix first
            k -= 1
        best = -1
        cdef bint caret = False, whole = False
        while k >= 0:
            length = self.lengths.ascending[k]
            if length and not self.lengths.admits(k, PyUnicode_READ(kind, data, 0),
                                                  PyUnicode_READ(kind, data, length - 1)):
                k -= 1
                continue
            hit = self.prefixes.get(path[:length] if length < size else path)
            if hit is not None:
                best = (<tuple>hit)[0]
                caret = (<tuple>hit)[1]
                whole = length == size
                break
            k -= 1
        if not whole:
            found = self.redirects.get(path)
            if found is not None:
                return (found, True)
        if not caret:
            found = self.regexes.first_hit(path)
            if found is not None:
                return (found, False)
        return (best, False)


# --- the table -------------------------------------------------------------------------------


@cython.final
cdef class Accel:
    """What the native match reads: a RuleTablePy's compiled attributes, typed."""

    cdef dict exact_domains
    cdef dict suffix_domains
    cdef _Lengths suffix_lengths
    cdef dict prefix_domains
    cdef _Lengths prefix_lengths
    cdef _Regexes regex_domains
    cdef object default_domain
    cdef tuple domains

    def __cinit__(self, table):
        self.exact_domains = table.exact_domains
        self.suffix_domains = table.suffix_domains
        self.suffix_lengths = _Lengths(self.suffix_domains, True)
        self.prefix_domains = table.prefix_domains
        self.prefix_lengths = _Lengths(self.prefix_domains, True)
        self.regex_domains = _Regexes(table.regex_domains)
        self.default_domain = table.default_domain
        self.domains = tuple([_Domain(rules) for rules in table.domains])

    cdef object _wildcard_or_regex_domain(self, str host):
        cdef Py_ssize_t size = len(host), dot, k
        cdef int kind = PyUnicode_KIND(host)
        cdef void *data = PyUnicode_DATA(host)
        cdef Py_UCS4 last = PyUnicode_READ(kind, data, size - 1) if size else 0
        if self.suffix_domains:  # "*.suffix": leftmost dot first, not at position 0
            for dot in range(1, size):
                if PyUnicode_READ(kind, data, dot) != u'.':
                    continue
                k = self.suffix_lengths.find(size - dot - 1)
                if k < 0 or (dot + 1 < size and not self.suffix_lengths.admits(
                        k, PyUnicode_READ(kind, data, dot + 1), last)):
                    continue
                found = self.suffix_domains.get(host[dot + 1:])
                if found is not None:
                    return found
        if self.prefix_domains:  # "prefix.*": rightmost dot first, something after it
            for dot in range(size - 2, 0, -1):
                if PyUnicode_READ(kind, data, dot) != u'.':
                    continue
                k = self.prefix_lengths.find(dot)
                if k < 0 or not self.prefix_lengths.admits(
                        k, PyUnicode_READ(kind, data, 0), PyUnicode_READ(kind, data, dot - 1)):
                    continue
                found = self.prefix_domains.get(host[:dot])
                if found is not None:
                    return found
        found = self.regex_domains.first_hit(host)
        return self.default_domain if found is None else found

    cdef tuple match(self, str host, str path):
        cdef str name = _normalize_host(host)
        domain_id = self.exact_domains.get(name)
        if domain_id is None:
            domain_id = self._wildcard_or_regex_domain(name)
            if domain_id < 0:
                return NO_MATCH
        return (<_Domain>self.domains[domain_id]).match(path)


def build(table):
    """The native form of a RuleTablePy, stored by RuleTable as its ``accel``."""
    return Accel(table)


def match(self, str host, str path):
    """``RuleTable.match`` when native: the same (rule index, redirect) as RuleTablePy's."""
    accel = self.accel
    if type(accel) is not Accel:  # a table built while the pure match was in charge
        raise TypeError("this RuleTable has no native index (accel is None)")
    return (<Accel>accel).match(host, path)
