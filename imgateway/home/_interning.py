# -*- test-case-name: tests.test_home_interning -*-
"""
One L{Address} object per address in the home server's cached rows.

Every row the store reads is made of new objects (SQLite gives new strings,
and the store makes an L{Address} of them): with 20 contacts, a user's
cached contact list and authorisations held 60 L{Address}es and 120
strings, 10 KiB, of addresses that every other cached user holds too. The
home server takes each address through L{internAddress}, so that all its
users share one object (and one domain string) per address for as long as
any of them keeps it: the table holds its objects weakly, and an address
nobody keeps leaves it. Contact records are shared so too: most have no
display name, and are the same for all the users who have the contact.

Addresses are immutable and compared by value, so which of two equal
objects is kept never shows; interning saves memory only.
"""

from __future__ import annotations

import sys
from weakref import WeakValueDictionary

from imgateway.core.address import Address
from imgateway.core.records import ContactRecord

__all__ = ["internAddress", "internContact"]

# Keyed by the parts, not by the objects (a key is held strongly: an object
# that were its own key would never leave).
_addresses: WeakValueDictionary[tuple[str, str], Address] = WeakValueDictionary()
_contacts: WeakValueDictionary[tuple[str, str, str], ContactRecord] = WeakValueDictionary()


def internAddress(address: Address) -> Address:
    """
    @return: The object that stands for C{address} in this process: one
        equal to it and kept by another user's rows, else C{address} itself
        (its domain string shared with the other addresses of its domain),
        kept from now on for as long as something else keeps it.
    """
    key = (address.local, address.domain)
    try:
        return _addresses[key]
    except KeyError:
        pass
    domain = sys.intern(address.domain)
    if domain is not address.domain:
        address = Address(address.local, domain)
    _addresses[address.local, domain] = address
    return address


def internContact(contact: ContactRecord) -> ContactRecord:
    """
    @return: The object that stands for C{contact} in this process, its
        address interned (L{internAddress}): every user who has the same
        contact under the same name (most often none) shares one record.
    """
    key = (contact.address.local, contact.address.domain, contact.displayName)
    try:
        return _contacts[key]
    except KeyError:
        pass
    address = internAddress(contact.address)
    if address is not contact.address:
        contact = ContactRecord(address, contact.displayName)
    _contacts[address.local, address.domain, contact.displayName] = contact
    return contact
