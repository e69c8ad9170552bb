"""Reference vocabularies of the Spotify domain: shared by the generator (which draws from them
with realistic weights) and by silver (which cleans and validates against them)."""

import numpy as np

# (ISO code, English name, relative weight): roughly Spotify's listener mix.
COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "United States", 22.0),
    ("BR", "Brazil", 8.0),
    ("GB", "United Kingdom", 7.0),
    ("DE", "Germany", 7.0),
    ("IN", "India", 6.0),
    ("MX", "Mexico", 6.0),
    ("FR", "France", 5.0),
    ("JP", "Japan", 4.0),
    ("CA", "Canada", 4.0),
    ("ES", "Spain", 4.0),
    ("ID", "Indonesia", 3.0),
    ("SE", "Sweden", 3.0),
    ("AU", "Australia", 3.0),
    ("IT", "Italy", 3.0),
    ("NL", "Netherlands", 2.0),
    ("PL", "Poland", 2.0),
    ("PH", "Philippines", 2.0),
    ("AR", "Argentina", 2.0),
    ("TR", "Turkey", 2.0),
    ("NO", "Norway", 1.0),
    ("KR", "South Korea", 1.0),
    ("ZA", "South Africa", 1.0),
    ("NG", "Nigeria", 1.0),
    ("IE", "Ireland", 1.0),
)
COUNTRY_CODES: tuple[str, ...] = tuple(code for code, _, _ in COUNTRIES)
COUNTRY_NAMES: dict[str, str] = {code: name for code, name, _ in COUNTRIES}
COUNTRY_WEIGHTS = np.array([weight for _, _, weight in COUNTRIES])

SUBSCRIPTIONS: tuple[str, ...] = ("Free", "Premium", "Family")
SUBSCRIPTION_WEIGHTS = np.array([0.55, 0.35, 0.10])

DEVICES: tuple[str, ...] = ("mobile", "desktop", "web", "smart_speaker", "tv")
DEVICE_WEIGHTS = np.array([0.65, 0.20, 0.07, 0.05, 0.03])

GENRES: tuple[str, ...] = (
    "pop", "hip-hop", "rock", "latin", "electronic", "r&b", "indie", "k-pop", "country",
    "reggaeton", "metal", "jazz", "classical", "folk", "soul", "punk", "blues", "ambient",
)  # fmt: skip
GENRE_WEIGHTS = np.array([18, 15, 12, 9, 8, 7, 6, 4, 4, 4, 3, 2, 2, 2, 1.5, 1, 1, 0.5])
