"""The synthetic world's vocabulary: latent traits and the categories they drive.

Each event category has a base daily rate, log-linear loadings on latent traits, a weekday
profile, an hour-of-day profile and its surface forms (merchant names, mini-program names,
page ids, apps, search queries). The generator in ``synthetic.py`` turns this table into
event streams; the task rules in ``tasks.py`` read the resulting events, never the traits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Latent traits, each a standardised score per user (activity is a separate heavy-tailed
# multiplier, age band and city tier are categorical and enter through youth/urban).
TRAITS = (
    "youth", "urban", "power", "commute", "food", "movie", "concert", "fitness", "gaming",
    "takeout", "green", "community", "physical", "brand", "value", "promo", "fraud",
    "launder", "churn", "travel", "finance",
)
T = {name: i for i, name in enumerate(TRAITS)}

# How far each trait drifts between the history and the future window (std of the change).
# Concert-going is the least stable taste, so concert is the hardest task to forecast.
DRIFT = {name: 0.35 for name in TRAITS} | {
    "youth": 0.05, "urban": 0.05, "concert": 1.6, "movie": 0.6, "fraud": 0.6, "launder": 0.6,
    "promo": 0.5, "churn": 0.3,
}

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_P = (0.18, 0.28, 0.22, 0.15, 0.10, 0.07)
CITY_TIER_P = (0.2, 0.3, 0.3, 0.2)

# Hour-of-day profiles (relative weights for hours 0..23).
_H = np.arange(24)


def _bumps(*centres_widths_weights: tuple[float, float, float], floor: float = 0.05) -> np.ndarray:
    w = np.full(24, floor)
    for c, s, a in centres_widths_weights:
        w += a * np.exp(-0.5 * ((_H - c) / s) ** 2)
    return w / w.sum()


HOURS = {
    "day": _bumps((11, 3, 1.0), (16, 3, 0.8)),
    "commute": _bumps((8, 1.0, 1.0), (18, 1.2, 0.9)),
    "meals": _bumps((12, 1.0, 1.0), (18.5, 1.3, 1.0)),
    "evening": _bumps((20, 2.0, 1.0)),
    "night": _bumps((22, 1.5, 0.7), (1, 1.5, 0.5)),
    "spread": _bumps((10, 4, 1.0), (20, 3, 1.0), floor=0.15),
}
# Weekday profiles (Monday .. Sunday).
DOW = {
    "flat": np.ones(7) / 7,
    "weekday": np.array([1.2, 1.2, 1.2, 1.2, 1.2, 0.5, 0.4]) / 6.9,
    "weekend": np.array([0.7, 0.7, 0.7, 0.8, 1.1, 1.6, 1.4]) / 7.0,
}


@dataclass(frozen=True)
class Category:
    name: str
    rate: float  # mean events per day for an average user
    loadings: dict[str, float]
    forms: tuple[str, ...]  # merchant / mini-program / app names, page ids or queries
    hours: str = "spread"
    dow: str = "flat"
    amount: tuple[float, float] = (3.5, 0.8)  # log-normal mu, sigma (bills only)
    brand_forms: tuple[str, ...] = ()  # bills: flagship-store merchants, picked by brand taste
    sale_only: bool = False  # events fall on big-sale days only
    activity_exp: float = 1.0  # how strongly the rate follows the user's general activity
    extra: dict = field(default_factory=dict)


def _branches(names: tuple[str, ...], k: int) -> tuple[str, ...]:
    return tuple(f"{n} #{i}" for n in names for i in range(1, k + 1))


BILL = (
    Category("groceries", 0.45, {"power": 0.1, "youth": -0.2},
             _branches(("FreshMart", "Harvest Grocer", "Daily Basket", "Lotus Market"), 6),
             "day", "weekend", (4.0, 0.7)),
    Category("dining", 0.30, {"food": 0.8, "power": 0.3, "urban": 0.2},
             _branches(("Golden Dragon Noodles", "Hotpot House", "Dim Sum Garden",
                        "Sichuan Pepper", "Rice Bowl Co"), 5),
             "meals", "weekend", (4.1, 0.6),
             ("Haidilao Flagship", "Din Tai Fung Flagship")),
    Category("takeout", 0.25, {"takeout": 1.0, "urban": 0.3, "youth": 0.3},
             ("Meituan Waimai", "Ele.me Delivery", "Quick Bite Delivery", "Lunch Express"),
             "meals", "weekday", (3.4, 0.4)),
    Category("coffee", 0.20, {"urban": 0.5, "youth": 0.3, "power": 0.3},
             _branches(("Bean There", "Morning Cup"), 4), "commute", "weekday", (3.2, 0.3),
             ("Starbucks Flagship", "Luckin Flagship")),
    Category("metro", 0.35, {"commute": 1.2, "urban": 0.6, "power": -0.2},
             ("City Metro", "Metro Line Pay"), "commute", "weekday", (1.4, 0.3)),
    Category("bus", 0.15, {"commute": 0.8, "urban": -0.2, "power": -0.5},
             ("City Bus", "Intercity Coach"), "commute", "weekday", (0.8, 0.3)),
    Category("ride_hailing", 0.10, {"power": 0.6, "urban": 0.4, "commute": 0.3},
             ("DiDi Rides", "Cao Cao Cars", "T3 Mobility"), "night", "weekend", (3.2, 0.6)),
    Category("fuel", 0.05, {"power": 0.4, "urban": -0.4, "commute": 0.4},
             _branches(("Sinopec Station", "PetroChina Station"), 3), "day", "flat",
             (5.3, 0.3)),
    Category("movie", 0.025, {"movie": 1.3, "youth": 0.3}, ("Maoyan Cinema", "Taopiaopiao",
             "Wanda Cinema", "CGV Cinemas"), "evening", "weekend", (3.9, 0.3)),
    Category("concert", 0.006, {"concert": 0.7, "youth": 0.15, "power": 0.1},
             ("Damai Live", "Showstart Tickets", "Live Nation Box Office"),
             "evening", "weekend", (6.0, 0.5), activity_exp=0.2),
    Category("fitness", 0.05, {"fitness": 1.2, "power": 0.3},
             _branches(("PowerHouse Gym", "Yoga Loft", "Swim Club"), 2),
             "evening", "weekday", (4.2, 0.8), ("Nike Flagship", "Lululemon Flagship")),
    Category("gaming", 0.06, {"gaming": 1.3, "youth": 0.6},
             ("Tencent Games", "NetEase Games", "miHoYo Store", "Steam Wallet"),
             "night", "weekend", (3.5, 1.0)),
    Category("apparel", 0.06, {"power": 0.6, "youth": 0.2, "promo": 0.3},
             _branches(("Urban Threads", "Style Depot"), 4), "evening", "weekend",
             (5.0, 0.8), ("Uniqlo Flagship", "Nike Flagship", "Adidas Flagship")),
    Category("electronics", 0.015, {"power": 0.8, "youth": 0.3, "promo": 0.4},
             ("Digital Plaza", "Gadget Hub", "Suning Electronics"), "evening", "weekend",
             (6.7, 1.0), ("Apple Flagship", "Huawei Flagship", "Xiaomi Flagship")),
    Category("luxury", 0.003, {"power": 1.6, "brand": 0.8}, ("Luxe Boutique",), "day",
             "weekend", (8.2, 0.6), ("Gucci Flagship", "Louis Vuitton Flagship")),
    Category("travel", 0.01, {"travel": 1.3, "power": 0.6}, ("Ctrip Travel", "Fliggy",
             "China Eastern Air", "12306 Rail"), "day", "flat", (6.8, 0.9)),
    Category("utilities", 0.03, {"youth": -0.3}, ("State Grid Power", "City Water",
             "Gas Company"), "day", "weekday", (4.8, 0.5)),
    Category("telecom", 0.03, {}, ("China Mobile", "China Unicom", "China Telecom"),
             "day", "flat", (4.0, 0.4)),
    Category("healthcare", 0.02, {"youth": -0.6}, _branches(("Community Pharmacy",
             "City Clinic"), 3), "day", "weekday", (4.5, 0.9)),
    Category("education", 0.01, {"youth": -0.2, "power": 0.3},
             ("Online Academy", "Language Center", "Kids Tutoring"), "evening", "flat",
             (6.0, 0.8)),
    Category("charity", 0.005, {"green": 0.8, "community": 0.4}, ("Green Earth Fund",
             "Hope Project"), "day", "flat", (3.5, 0.8)),
    Category("transfer_in", 0.04, {"launder": 1.6, "finance": 0.3, "youth": -0.1},
             ("Bank Transfer In", "Friend Transfer In"), "spread", "flat", (6.5, 1.1)),
    Category("transfer_out", 0.04, {"launder": 1.6, "finance": 0.3, "fraud": 0.4},
             ("Bank Transfer Out", "Friend Transfer Out"), "spread", "flat", (6.3, 1.1)),
    Category("loan_repay", 0.01, {"fraud": 1.0, "power": -0.4, "finance": 0.3},
             ("Quick Credit", "Cash Loan Express"), "night", "flat", (6.5, 0.8)),
    Category("dispute", 0.003, {"fraud": 2.2}, ("Chargeback Claim", "Payment Dispute"),
             "spread", "flat", (5.5, 1.0)),
    Category("bigsale_order", 0.05, {"promo": 1.6, "power": 0.3, "value": 0.3},
             ("Tmall Big Sale", "JD 618 Sale", "Pinduoduo Sale"), "night", "flat",
             (5.0, 0.9), sale_only=True),
)

MINIPRO = (
    Category("transport", 0.20, {"commute": 1.0, "urban": 0.4}, ("Metro QR Code",
             "Bike Share", "Bus Tracker"), "commute", "weekday"),
    Category("food", 0.12, {"food": 1.3}, ("Dianping Reviews", "Recipe Book",
             "Foodie Map", "Tea Shop Finder"), "meals", "weekend"),
    Category("takeout", 0.15, {"takeout": 1.1, "urban": 0.2}, ("Ele.me", "Meituan Lite"),
             "meals", "weekday"),
    Category("movie", 0.04, {"movie": 1.2}, ("Maoyan Movies", "Cinema Times"), "evening",
             "weekend"),
    Category("concert", 0.010, {"concert": 1.3, "youth": 0.3}, ("Damai Tickets",
             "Live Show Finder"), "evening", "weekend"),
    Category("green", 0.20, {"green": 1.5, "youth": -0.2}, ("Ant Forest", "Green Energy",
             "Carbon Ledger"), "commute", "flat"),
    Category("community", 0.05, {"community": 1.5}, ("Interest Circles", "Hobby Groups",
             "Neighbourhood Chat"), "evening", "weekend"),
    Category("deals", 0.06, {"value": 1.4, "power": -0.4}, ("Group Buy Deals",
             "Price Compare", "Coupon Hunter"), "day", "flat"),
    Category("bigsale", 0.10, {"promo": 1.8, "value": 0.2}, ("Big Sale Center",
             "618 Carnival", "Flash Deals Hall"), "night", "flat", sale_only=True),
    Category("physical_rewards", 0.015, {"physical": 1.5, "value": 0.3},
             ("Points Mall", "Gift Redemption", "Prize Draw"), "day", "flat"),
    Category("games", 0.05, {"gaming": 1.2, "youth": 0.4}, ("Mini Games", "Daily Quiz"),
             "night", "weekend"),
    Category("finance", 0.06, {"finance": 1.3, "power": 0.3, "youth": -0.2},
             ("Wealth Manager", "Fund Market", "Credit Score"), "day", "weekday"),
    Category("loans", 0.01, {"fraud": 1.4, "power": -0.5}, ("Instant Credit",
             "Micro Loans"), "night", "flat"),
    Category("health", 0.03, {"fitness": 0.6, "youth": -0.4}, ("Health Code",
             "Hospital Booking", "Step Counter"), "day", "weekday"),
    Category("travel", 0.02, {"travel": 1.3}, ("Fliggy Travel", "Hotel Booking",
             "Train Tickets"), "evening", "flat"),
    Category("utilities", 0.04, {"youth": -0.2}, ("Pay Utilities", "Phone Top-up"), "day",
             "flat"),
)

# SPM-style page ids "a<site>.b<page>": the generator appends ".c<module>.d<position>".
SPM = (
    Category("home", 0.80, {"youth": 0.2}, ("a10.b1001",), "spread", "flat",
             extra={"modules": 6}),
    Category("bills_page", 0.15, {"finance": 0.6, "youth": -0.2}, ("a10.b1002",), "day",
             "flat", extra={"modules": 3}),
    Category("coupons", 0.12, {"value": 1.2, "promo": 0.6}, ("a10.b1203",), "day", "flat",
             extra={"modules": 4}),
    Category("badge", 0.03, {"gaming": 1.4, "youth": 0.5}, ("a10.b1304",), "night",
             "weekend", extra={"modules": 3}),
    Category("forest", 0.15, {"green": 1.6}, ("a21.b2101",), "commute", "flat",
             extra={"modules": 4}),
    Category("community", 0.05, {"community": 1.4}, ("a22.b2201",), "evening", "weekend",
             extra={"modules": 5}),
    Category("wealth", 0.08, {"finance": 1.4, "power": 0.4}, ("a30.b3001",), "day",
             "weekday", extra={"modules": 6}),
    Category("credit", 0.03, {"fraud": 1.2, "power": -0.3}, ("a30.b3105",), "night", "flat",
             extra={"modules": 3}),
    Category("mall", 0.06, {"physical": 1.0, "promo": 0.5}, ("a40.b4001",), "evening",
             "weekend", extra={"modules": 6}),
    Category("transit_card", 0.10, {"commute": 1.3}, ("a50.b5001",), "commute", "weekday",
             extra={"modules": 2}),
    Category("ticketing", 0.02, {"movie": 0.8, "concert": 0.8}, ("a60.b6001",), "evening",
             "weekend", extra={"modules": 4}),
    Category("security", 0.01, {"fraud": 1.0}, ("a70.b7001",), "night", "flat",
             extra={"modules": 2}),
)

APP = (
    Category("social", 0.6, {"youth": 0.5, "community": 0.4}, ("WeChat", "Weibo",
             "Xiaohongshu", "QQ"), "spread", "flat", (3.0, 0.8)),
    Category("video", 0.4, {"youth": 0.6, "movie": 0.4}, ("Douyin", "Kuaishou", "Bilibili",
             "iQiyi"), "evening", "weekend", (3.3, 0.9)),
    Category("shopping", 0.25, {"promo": 0.7, "power": 0.3}, ("Taobao", "JD", "Pinduoduo"),
             "evening", "flat", (2.5, 0.8)),
    Category("games", 0.2, {"gaming": 1.4, "youth": 0.6}, ("Honor of Kings", "Genshin",
             "Happy Mahjong"), "night", "weekend", (3.6, 0.8)),
    Category("music", 0.2, {"concert": 0.9, "youth": 0.5}, ("NetEase Music", "QQ Music"),
             "commute", "flat", (3.0, 0.7)),
    Category("maps", 0.15, {"commute": 0.8, "travel": 0.5}, ("Amap", "Baidu Maps"),
             "commute", "weekday", (1.6, 0.6)),
    Category("news", 0.2, {"youth": -0.6}, ("Toutiao", "Tencent News"), "day", "flat",
             (2.6, 0.7)),
    Category("fitness", 0.08, {"fitness": 1.4}, ("Keep", "Mi Fitness"), "evening",
             "weekday", (3.2, 0.5)),
    Category("finance", 0.08, {"finance": 1.3}, ("Futu", "Bank App", "Tiantian Fund"), "day",
             "weekday", (2.0, 0.6)),
    Category("reading", 0.08, {"youth": -0.2}, ("WeRead", "Zhihu"), "night", "flat",
             (3.0, 0.7)),
)

SEARCH = (
    Category("food", 0.04, {"food": 1.2}, (
        "hotpot near me", "best dim sum", "spicy noodles recipe", "brunch spots weekend",
        "tea shop new flavour", "dumplings delivery", "food festival")),
    Category("takeout", 0.03, {"takeout": 1.2}, (
        "takeout coupon", "late night delivery", "lunch set deal", "milk tea delivery")),
    Category("movie", 0.015, {"movie": 1.2}, (
        "movie showtimes", "new release film", "cinema imax tickets", "film reviews")),
    Category("concert", 0.006, {"concert": 1.4}, (
        "concert tickets", "live house this weekend", "music festival lineup",
        "stadium tour presale")),
    Category("fitness", 0.015, {"fitness": 1.3}, (
        "gym membership deal", "yoga class", "running shoes", "swimming pool hours")),
    Category("travel", 0.012, {"travel": 1.3}, (
        "cheap flights", "hotel deals", "train tickets holiday", "visa application")),
    Category("shopping", 0.03, {"promo": 0.8, "power": 0.3}, (
        "618 presale", "phone discount", "sneakers sale", "big sale coupons")),
    Category("value", 0.02, {"value": 1.3}, (
        "cheapest price compare", "group buy", "cashback offers", "discount codes")),
    Category("finance", 0.015, {"finance": 1.3}, (
        "fund returns", "savings rate", "credit card points", "stock market today")),
    Category("loans", 0.004, {"fraud": 1.5, "power": -0.4}, (
        "quick loan no credit check", "borrow money fast", "instant cash", "loan app")),
    Category("games", 0.012, {"gaming": 1.3}, (
        "game top up", "game guide", "new season rewards", "achievement unlock")),
    Category("green", 0.008, {"green": 1.2}, (
        "ant forest energy", "plant a tree", "carbon points", "recycling near me")),
    Category("utilities", 0.01, {}, ("pay electricity", "phone bill", "water bill")),
)

MODALITY_CATEGORIES = {"bill": BILL, "minipro": MINIPRO, "spm": SPM, "app": APP,
                       "search": SEARCH}

TABULAR_NAMES = (
    "age_band", "city_tier", "account_age_years", "credit_score", "linked_cards",
    "balance_level", "membership_level", "has_car", "has_mortgage", "verified_id",
    "devices", "monthly_active_days",
)
