"""Generate the default catalog that ships with explorank (``export/catalogs/default_catalog.jsonl``).

A fresh install must have something *real* to serve without any licensed data set, so the
catalog is synthesised from hand-written word lists: films, books, podcasts, games, recipes and
gadgets, each with genres that own their title words, settings, themes and plot sentences.
Items that share a genre share vocabulary, so a sentence encoder places them close together
(the ranking and exploration demos need that structure); a verbosity level drawn per item gives
texts from about 8 to 80 tokens, like real catalogs (bare titles next to long blurbs).

Everything is drawn from one seeded ``random.Random`` in a fixed order, so
``python -m explorank.export.catalog_gen --out export/catalogs/default_catalog.jsonl`` regenerates
the committed file byte for byte (a test checks it).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from explorank.export.data import Item, write_catalog_jsonl

DEFAULT_CATALOG_PATH = Path(__file__).parent / "catalogs" / "default_catalog.jsonl"
DEFAULT_SEED = 20240607
DEFAULT_PER_DOMAIN = 500


def _s(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split("|") if x.strip())


@dataclass(frozen=True)
class Genre:
    name: str
    adj: tuple[str, ...]
    noun: tuple[str, ...]
    setting: tuple[str, ...]
    theme: tuple[str, ...]
    plot: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    prefix: str  # id prefix, e.g. "film" -> "film-00042"
    kind: str  # what an item is, e.g. "film"
    moods: tuple[str, ...]
    audiences: tuple[str, ...]
    details: tuple[str, ...]  # templates with {n} / {m} / {y}
    where: str  # joins the kind to a setting: "set in", "for", ...
    about: str  # template with {a} and {b}: two themes
    genres: tuple[Genre, ...]


def G(name: str, adj: str, noun: str, setting: str, theme: str, plot: str) -> Genre:  # noqa: N802
    return Genre(name, _s(adj), _s(noun), _s(setting), _s(theme), _s(plot))


FILMS = Domain("film", "film", _s("slow-burning|tense|heartfelt|darkly funny|visually stunning|bittersweet|gritty|uplifting|haunting|playful"),
    _s("adults|families|teenagers|fans of festival cinema|anyone who loves a good twist|a cosy night in"),
    _s("Runtime {n} minutes.|Shot on 35mm film over {m} weeks.|Winner of {m} festival awards.|Released in {y}."),
    "set in", "It is about {a} and {b}.",
    (
        G("science fiction film", "Distant|Silent|Quantum|Hollow|Crimson|Infinite|Last|Broken", "Orbit|Signal|Colony|Horizon|Starship|Machine|Eclipse|Frontier",
          "a derelict space station|a colony on Mars|a flooded megacity in 2140|the edge of the solar system|an underground research lab",
          "artificial intelligence|first contact with aliens|time travel|survival in space|what makes us human",
          "An engineer wakes from cryosleep to find the crew gone.|A rogue android questions the orders it was built to follow.|A faint radio signal from deep space changes everything.|Astronauts race to repair their ship before oxygen runs out."),
        G("crime thriller", "Cold|Silent|Dirty|Final|Hidden|Midnight|Perfect|Crooked", "Alibi|Witness|Heist|Verdict|Informant|Ledger|Motive|Getaway",
          "rain-soaked city streets|a border town|a casino in Macau|a police precinct in the 1970s|the docks of Marseille",
          "corruption|revenge|loyalty among thieves|a detective's obsession|justice and the law",
          "A detective reopens a case that ended her partner's career.|A crew of thieves plans one last bank heist.|A witness goes into hiding after seeing a murder.|An undercover agent is no longer sure which side she is on."),
        G("romance film", "Summer|Second|Little|Golden|Paper|Sweet|Tender|Endless", "Letters|Promise|Kiss|Wedding|Harbor|Garden|Waltz|Valentine",
          "a seaside village in Portugal|a Paris bookshop|a snowed-in mountain inn|a vineyard in Tuscany|a busy New York bakery",
          "falling in love again|long-distance love|first love|love across class lines|second chances",
          "Two rivals are forced to plan a wedding together.|A widowed baker meets a travelling musician.|Old love letters found in an attic reunite two strangers.|A summer romance must survive the end of the holidays."),
        G("comedy film", "Big|Awkward|Crazy|Lucky|Terrible|Accidental|Wild|Fake", "Weekend|Roommates|Reunion|Road Trip|Vacation|Neighbors|Interns|Party",
          "a chaotic family holiday|a failing summer camp|a small-town talent show|a cruise ship|a tech startup office",
          "friendship|family chaos|growing up|mistaken identity|office life",
          "Two best friends accidentally book the same honeymoon suite.|A clumsy groom loses the wedding rings the night before.|An overworked dad pretends to be a celebrity chef.|A group of misfits enters a hot-dog eating contest."),
        G("horror film", "Dead|Pale|Rotten|Hungry|Whispering|Black|Cursed|Silent", "House|Ritual|Woods|Cellar|Doll|Harvest|Mirror|Asylum",
          "an abandoned asylum|a remote cabin in the woods|an old Victorian house|a foggy fishing village|a haunted boarding school",
          "possession|grief and ghosts|a curse passed down generations|isolation and paranoia|folk rituals",
          "A family moves into a house where the walls whisper at night.|Campers find strange symbols carved into the trees.|A girl's new doll seems to move on its own.|Villagers prepare a harvest ritual that demands a sacrifice."),
        G("drama film", "Quiet|Long|Broken|Ordinary|Fading|Distant|Hard|Honest", "Years|Silence|Inheritance|Homecoming|Season|Shore|Daughter|Factory",
          "a mining town in decline|a Dublin council estate|a family farm in Iowa|a hospital ward|post-war Berlin",
          "grief|family secrets|class and ambition|addiction and recovery|forgiveness",
          "A daughter returns home to care for her ailing father.|Three siblings fight over the family farm after a funeral.|A factory worker takes on the company that fired him.|A nurse struggles to keep her ward open."),
        G("documentary film", "Hidden|Wild|True|Untold|Living|Vanishing|Secret|Frozen", "Planet|Ocean|Kingdom|Story|Reef|Archive|Rivers|Voices",
          "the Arctic ice sheet|the Amazon rainforest|coral reefs of Indonesia|a refugee camp|the streets of Lagos",
          "climate change|wildlife conservation|the history of jazz|social justice|the food we eat",
          "Filmmakers spend a year following a family of snow leopards.|Interviews and rare archive footage tell the story of a forgotten musician.|Scientists track the collapse of a coral reef.|Farmers fight to save their land from drought."),
        G("animated adventure film", "Little|Brave|Magic|Tiny|Flying|Lost|Giant|Clever", "Dragon|Robot|Fox|Island|Kingdom|Balloon|Toys|Forest",
          "an enchanted forest|a city of talking animals|a floating island|a toy shop after closing time|a candy kingdom",
          "friendship|courage|family|believing in yourself|teamwork",
          "A young fox sets out to find her missing family.|A lonely robot befriends a baby dragon.|Toys come alive to rescue a lost teddy bear.|Two siblings sail a flying ship to a hidden island."),
        G("western film", "Lone|Dusty|Iron|Bitter|Red|Wild|Silver|Last", "Rider|Canyon|Outlaw|Frontier|Sheriff|Gold|Trail|Mesa",
          "the Texas frontier|a gold-rush town|the Arizona desert|a railroad camp|the Montana plains",
          "revenge|law and order|the end of the frontier|honor|survival",
          "A retired gunslinger is pulled into one last fight.|A sheriff must defend his town from a ruthless gang.|A widow hunts the outlaws who burned her ranch.|Drifters race across the desert for a stolen gold shipment."),
        G("fantasy epic film", "Shattered|Ancient|Iron|Hidden|Sacred|Fallen|Burning|Eternal", "Crown|Sword|Throne|Realm|Prophecy|Citadel|Oath|Dragon",
          "a kingdom at war|an elven forest|a mountain fortress|a city of wizards|a frozen northern realm",
          "destiny|the price of power|good against evil|ancient magic|loyalty and betrayal",
          "A farm boy learns he is heir to a fallen kingdom.|A sorceress must unite rival clans against an ancient evil.|A band of knights seeks a legendary sword.|A prophecy sets a thief on the path to the throne."),
    ),
)  # fmt: skip

BOOKS = Domain("book", "book", _s("gripping|lyrical|cosy|thought-provoking|sweeping|witty|atmospheric|moving|brisk|dark"),
    _s("book clubs|young adult readers|history buffs|commuters|readers who love a slow burn|anyone starting out"),
    _s("{n} pages.|Book {m} of a series.|A debut novel translated into {m} languages.|First published in {y}."),
    "set in", "It is about {a} and {b}.",
    (
        G("mystery novel", "Silent|Missing|Blue|Locked|Crooked|Hidden|Last|Painted", "Room|Key|Witness|Manor|Clue|Portrait|Train|Letter",
          "an English country manor|a snowbound train|a sleepy coastal village|Victorian London|a university campus",
          "a locked-room murder|family secrets|amateur detectives|a missing heiress|an unsolved cold case",
          "A retired schoolteacher investigates a death at the village fete.|Guests at a country house are trapped with a killer.|A librarian finds a coded note inside a returned book.|A young constable reopens a case everyone wants forgotten."),
        G("fantasy novel", "Shadow|Silver|Stolen|Wandering|Thorned|Seventh|Burning|Hollow", "Crown|Witch|Queen|Tower|Blade|Map|Court|Gate",
          "a city built on the back of a giant turtle|a magic academy|a kingdom of endless winter|the fae courts|a desert empire",
          "magic systems|chosen ones|court intrigue|found family|a war between gods",
          "A thief steals a map that redraws itself.|A young witch enrols in an academy that hides a dark secret.|Two rival heirs compete for a cursed crown.|A cartographer discovers a country that is not on any map."),
        G("science fiction novel", "Hard|Red|Deep|Last|Synthetic|Distant|Long|Dark", "Light|Orbit|Archive|Ship|Mind|Protocol|Station|Drift",
          "a generation ship|a terraformed Mars|a galaxy-spanning empire|a city run by an AI|Earth after the collapse",
          "artificial minds|interstellar war|climate collapse|memory and identity|first contact",
          "A ship's AI must decide whether to wake its sleeping crew.|A linguist decodes an alien message.|A clone learns she is the ninth copy.|Colonists on a new world find ruins older than humanity."),
        G("historical novel", "Last|Golden|Forgotten|Iron|Silk|Winter|Scarlet|Queen's", "Empire|Road|Nightingale|Harvest|Sisters|Garden|Tower|Letters",
          "Tudor England|Paris under occupation|ancient Rome|the Silk Road|a Victorian mill town",
          "war and survival|women in history|revolution|art and ambition|family across generations",
          "Two sisters take different sides during the French Resistance.|A weaver's daughter rises in the court of Henry VIII.|A Roman soldier guards the edge of the empire.|A merchant's caravan crosses the Silk Road."),
        G("romance novel", "Sweet|Wild|Secret|Summer|Starlit|Royal|Second|Reckless", "Heart|Vows|Duke|Season|Bakery|Island|Proposal|Match",
          "a Regency ballroom|a small-town bakery|a Greek island|a rival law firm|a Highland castle",
          "enemies to lovers|fake dating|second-chance romance|forbidden love|a marriage of convenience",
          "A wallflower strikes a deal with the most eligible duke in London.|Two rival lawyers are stuck on the same case.|A baker and a food critic cannot stand each other.|A fake engagement starts to feel real."),
        G("biography", "Remarkable|Private|Unfinished|Extraordinary|Restless|Quiet|Fearless|Brilliant", "Life|Journey|Legacy|Mind|Years|Voice|Genius|Story",
          "the Manhattan Project|Silicon Valley|the civil rights movement|Victorian science|the golden age of Hollywood",
          "ambition and sacrifice|science and discovery|leadership|art and madness|courage",
          "The life of a pioneering woman chemist, told through her letters.|A portrait of the engineer who built the first computers.|The rise and fall of a Hollywood star.|An activist's journey from a small town to the world stage."),
        G("self-help book", "Better|Simple|Small|Deep|Daily|Calm|Focused|Mindful", "Habits|Mind|Life|Work|Steps|Rules|Morning|Balance",
          "busy working lives|a noisy digital world|the modern office|daily routines|early parenthood",
          "productivity|mindfulness|building habits|confidence|money and saving",
          "Small daily changes add up to a calmer, more focused life.|A practical guide to saying no and protecting your time.|Research-backed steps to break bad habits.|Exercises to quiet anxiety and sleep better."),
        G("literary fiction novel", "Small|Blue|Quiet|Ordinary|Distant|Unremarkable|Hidden|Paper", "Lives|Hours|Rooms|River|House|Things|Weather|Shore",
          "a Dublin suburb|a fading seaside town|a Tokyo apartment block|rural Norway|a New York walk-up",
          "loneliness|memory|marriage|class|the passing of time",
          "A widower writes letters to his late wife.|Neighbours in one apartment block live parallel lives.|A woman returns to the island where she grew up.|A family gathers for one last summer at the lake house."),
    ),
)  # fmt: skip

PODCASTS = Domain("podcast", "podcast", _s("chatty|investigative|relaxed|nerdy|fast-paced|in-depth|light-hearted|serious|conversational|bite-sized"),
    _s("curious listeners|commuters|students|professionals|anyone who loves a deep dive|dog walkers"),
    _s("Episodes run about {n} minutes.|New episodes every week; {m} seasons so far.|Hosted by {m} friends.|Running since {y}."),
    "exploring", "Topics include {a} and {b}.",
    (
        G("true crime podcast", "Cold|Unsolved|Missing|Dark|Dead|Hidden|Last|Silent", "Case|Files|Trail|Evidence|Alibi|Confession|Tapes|Verdict",
          "small-town America|the courtroom|police archives|1980s Los Angeles|rural Australia",
          "unsolved murders|wrongful convictions|cults|con artists|forensic science",
          "Each season follows one unsolved case from start to finish.|Hosts re-examine evidence in a decades-old disappearance.|Interviews with detectives, lawyers and families.|The story of a con artist who fooled a whole town."),
        G("science podcast", "Curious|Big|Tiny|Strange|Deep|Wonder|Hidden|Quantum", "Questions|Universe|Lab|Brain|Cells|Atoms|Planet|Science",
          "research labs|the night sky|the human body|the deep ocean|the world of microbes",
          "astronomy|neuroscience|evolution|physics explained simply|climate science",
          "Scientists explain one big question in plain language each week.|Why do we dream, and what happens in the brain at night?|A tour of black holes, dark matter and the early universe.|The strange lives of microbes inside us."),
        G("history podcast", "Lost|Ancient|Forgotten|Great|Hidden|Revolutionary|Medieval|Imperial", "Empires|Ages|Battles|Kings|History|Chronicles|Dynasties|Revolutions",
          "ancient Rome|medieval Europe|the Cold War|the Ottoman Empire|Edo Japan",
          "wars and revolutions|forgotten people|empires rising and falling|everyday life in the past|great leaders",
          "A narrative retelling of the fall of the Roman Republic.|Each episode follows one forgotten figure from history.|How ordinary people lived through the plague.|The Cold War told through its spies."),
        G("comedy podcast", "Dumb|Weird|Awkward|Bad|Silly|Tiny|Unhinged|Loud", "Chat|Hour|Show|Friends|Hangout|Banter|Couch|Nonsense",
          "a living-room studio|a comedy club green room|a pub table|a road trip|a late-night radio booth",
          "improv|pop culture|embarrassing stories|bad movies|everyday absurdities",
          "Comedians swap their most embarrassing stories.|Two friends review the worst movies ever made.|Improvised games and listener dares.|A weekly roundup of the strangest news."),
        G("business podcast", "Smart|Bold|Lean|Startup|Money|Growth|Founder|Market", "Moves|Minds|Stories|Lessons|Talks|Playbook|Insider|Weekly",
          "Silicon Valley|Wall Street|small family businesses|the startup world|boardrooms",
          "entrepreneurship|investing|leadership|marketing|personal finance",
          "Founders tell how they built their companies from nothing.|Plain-language explanations of markets and investing.|Lessons from leaders on hiring and management.|How small businesses survive a hard year."),
        G("health and wellness podcast", "Healthy|Mindful|Calm|Strong|Better|Balanced|Active|Happy", "Habits|Body|Mind|Living|Sleep|Life|Energy|Health",
          "the gym|the kitchen|a quiet bedroom|a meditation retreat|the doctor's office",
          "nutrition|sleep|mental health|fitness|mindfulness",
          "Doctors and coaches share simple habits for a healthier life.|Guided talks on stress, sleep and anxiety.|What science really says about diets.|Training tips for beginners and marathon runners."),
        G("technology podcast", "Future|Digital|Hard|Open|Smart|Connected|Binary|Cloud", "Code|Tech|Bytes|Signals|Stack|Machines|Circuit|Network",
          "Silicon Valley|open-source communities|hardware labs|the cloud|a developer's desk",
          "artificial intelligence|privacy|software engineering|gadgets|the future of the internet",
          "Engineers explain how the apps we use every day really work.|A weekly look at AI, privacy and the tech industry.|Interviews with open-source maintainers.|Reviews of the newest phones, laptops and gadgets."),
        G("sports podcast", "Full|Extra|Final|Pro|Game|Total|Fast|Big", "Time|Whistle|Play|Talk|Court|Pitch|Season|Score",
          "the locker room|the football pitch|the basketball court|the racing paddock|the training ground",
          "football tactics|basketball|the Olympics|sports history|fantasy leagues",
          "Former players break down the weekend's matches.|Tactics explained with stats and stories.|Great comebacks in sports history.|Tips and trades for fantasy league managers."),
    ),
)  # fmt: skip

GAMES = Domain("game", "video game", _s("challenging|relaxing|atmospheric|fast-paced|story-rich|cosy|competitive|strategic|chaotic|beautiful"),
    _s("solo players|friends on the couch|competitive players|casual players|completionists|players new to the genre"),
    _s("About {n} hours to finish.|Online co-op for up to {m} players.|Playable on PC and consoles since {y}.|Includes {m} difficulty modes."),
    "set in", "It is about {a} and {b}.",
    (
        G("role-playing game", "Eternal|Shattered|Crimson|Ancient|Lost|Fallen|Sacred|Forgotten", "Saga|Legends|Quest|Kingdoms|Chronicles|Realm|Oath|Relic",
          "an open fantasy world|a ruined empire|a world of floating islands|a dark medieval kingdom|a sprawling desert",
          "choices and consequences|character builds|party companions|an epic quest|ancient magic",
          "Build a party of heroes and decide the fate of a divided kingdom.|Every choice changes how the world reacts to you.|Explore ruins, craft gear and level up your character.|A cursed knight searches for a way to break an ancient oath."),
        G("strategy game", "Total|Iron|Grand|Rising|Imperial|Endless|Supreme|Cold", "Empire|Command|Conquest|Dominion|Tactics|Frontier|Dynasty|Warfront",
          "a map of Europe in 1800|a distant galaxy|ancient China|a post-apocalyptic continent|a medieval kingdom",
          "resource management|diplomacy|turn-based combat|city building|empire building",
          "Lead a small tribe to a galactic empire, one turn at a time.|Manage supply lines, alliances and armies.|Outwit rival rulers through trade, spies and war.|Command squads in tense turn-based battles."),
        G("platformer game", "Super|Tiny|Bouncy|Pixel|Hollow|Little|Jumping|Glowing", "Jump|Quest|Leap|Climb|Dash|Caves|Tower|Hero",
          "a pixel-art forest|a crumbling tower|underground caves|a candy world|a clockwork city",
          "precise jumping|exploration|secrets and collectibles|speedrunning|boss fights",
          "Run, jump and dash through hand-drawn levels.|A tiny hero climbs a mountain one hard jump at a time.|Hidden paths reward players who explore every corner.|Tight controls and tough boss fights."),
        G("puzzle game", "Clever|Quiet|Tiny|Impossible|Hidden|Twisted|Simple|Endless", "Blocks|Puzzles|Maze|Gears|Paths|Mirrors|Logic|Tiles",
          "a mysterious island|an abandoned lighthouse|a geometric world|an old clock tower|a dreamlike museum",
          "logic|spatial reasoning|pattern matching|environmental puzzles|wordplay",
          "Rotate rooms and bend light to open each door.|Hundreds of hand-crafted logic puzzles.|Explore an island where every panel hides a puzzle.|Match tiles to uncover a quiet, moving story."),
        G("first-person shooter game", "Dead|Black|Iron|Steel|Final|Rogue|Tactical|Zero", "Ops|Strike|Front|Squad|Protocol|Zone|Siege|Arsenal",
          "a war-torn city|a space colony|a military base|a near-future megacity|an alien planet",
          "team tactics|competitive multiplayer|fast gunplay|squad-based combat|military sci-fi",
          "Fight through a war-torn city with your squad.|Fast online matches on dozens of maps.|Customise your loadout and master every weapon.|Defend a colony from waves of alien invaders."),
        G("racing game", "Fast|Burning|Turbo|Wild|Street|Neon|Rally|Drift", "Racers|Speed|Rivals|Circuit|Kings|Road|Motors|Nitro",
          "neon city streets|mountain rally roads|famous race circuits|a desert off-road track|coastal highways",
          "speed|car tuning|drifting|online rivals|realistic driving",
          "Race hundreds of licensed cars across an open world.|Tune your car and climb the street racing ranks.|Master muddy rally stages in realistic conditions.|Split-screen kart racing with power-ups."),
        G("survival horror game", "Dead|Silent|Dark|Rotten|Last|Hollow|Cursed|Black", "Hospital|Island|Signal|Mansion|Outbreak|Nightmare|Ward|Woods",
          "an abandoned hospital|a zombie-infested city|a haunted mansion|a frozen research base|a fog-covered town",
          "scarce resources|zombies|psychological horror|escape|monsters in the dark",
          "Scavenge for supplies while something hunts you in the dark.|Escape a research base overrun by creatures.|Solve puzzles in a mansion that shifts around you.|Survive a zombie outbreak with a handful of bullets."),
        G("simulation game", "Happy|Little|Cosy|Busy|Green|Sunny|Perfect|Peaceful", "Farm|Village|Town|Cafe|Valley|Garden|Island|Harbor",
          "a countryside farm|a small island town|a busy city|a seaside cafe|a quiet valley",
          "farming|city building|life simulation|crafting|running a business",
          "Grow crops, raise animals and befriend the villagers.|Design and manage a busy city.|Run a cosy cafe and serve quirky customers.|Build a home on a deserted island."),
    ),
)  # fmt: skip

RECIPES = Domain("recipe", "recipe", _s("comforting|zesty|spicy|light|hearty|smoky|fresh|rich|quick|festive"),
    _s("weeknight dinners|vegetarians|meal prep|dinner parties|families with kids|beginner cooks"),
    _s("Ready in {n} minutes.|Serves {m}.|Keeps in the fridge for {m} days.|A family favourite since {y}."),
    "inspired by", "Expect {a} and {b}.",
    (
        G("Italian pasta recipe", "Creamy|Garlic|Classic|Rustic|Lemon|Roman|Spicy|Slow-Cooked", "Carbonara|Lasagne|Linguine|Pesto Pasta|Ragu|Gnocchi|Ravioli|Penne",
          "a Roman trattoria|a Tuscan farmhouse kitchen|a Sunday family lunch|a Naples street market|a busy weeknight kitchen",
          "parmesan and black pepper|fresh basil and tomato|slow-cooked beef ragu|garlic and olive oil|ricotta and spinach",
          "Toss fresh pasta with a silky egg and cheese sauce.|Layer rich meat sauce with sheets of pasta and bechamel.|Simmer tomatoes with garlic until sweet and thick.|Fold ricotta and spinach into soft homemade dough."),
        G("Indian curry recipe", "Butter|Spicy|Creamy|Coconut|Fragrant|Smoky|Tikka|Madras", "Chicken Curry|Dal|Korma|Biryani|Masala|Vindaloo|Paneer|Chana",
          "a Delhi street stall|a Kerala home kitchen|a Punjabi dhaba|a Mumbai food market|a festive family feast",
          "warming spices|coconut milk|lentils and chickpeas|slow-cooked onions|fresh coriander and ginger",
          "Toast whole spices, then simmer chicken in a creamy tomato sauce.|Slow-cook red lentils with turmeric and cumin.|Layer spiced rice and vegetables and steam until fluffy.|Grill paneer and finish in a buttery masala."),
        G("Mexican recipe", "Smoky|Spicy|Street|Zesty|Roasted|Chipotle|Lime|Crispy", "Tacos|Enchiladas|Burrito Bowl|Quesadillas|Chili|Salsa|Tamales|Nachos",
          "a Mexico City taco stand|a backyard fiesta|an Oaxacan kitchen|a Texas cookout|a beach shack",
          "chipotle and lime|slow-cooked pork|black beans and corn|fresh salsa|avocado and coriander",
          "Char tortillas and fill them with slow-cooked pulled pork.|Roll chicken in tortillas and bake under a spicy red sauce.|Blend roasted tomatoes, chillies and lime into salsa.|Pile rice, beans, corn and avocado into a bowl."),
        G("Japanese recipe", "Miso|Crispy|Teriyaki|Light|Umami|Sesame|Ginger|Simple", "Ramen|Sushi Bowl|Katsu|Udon|Gyoza|Donburi|Tempura|Onigiri",
          "a Tokyo noodle bar|an izakaya|a bento lunch box|a Kyoto home kitchen|a late-night ramen shop",
          "miso and ginger|rich pork broth|crispy panko|sesame and soy|fresh fish and rice",
          "Simmer a deep broth and top noodles with a soft egg.|Coat pork in panko and fry until golden.|Pleat dumplings and pan-fry until crisp underneath.|Glaze salmon with teriyaki and serve over rice."),
        G("baking and dessert recipe", "Chocolate|Lemon|Sticky|Salted|Vanilla|Cinnamon|Berry|Fudgy", "Cake|Brownies|Cookies|Tart|Cheesecake|Buns|Muffins|Pie",
          "a grandmother's kitchen|a Parisian patisserie|a birthday party|a winter holiday table|an afternoon tea",
          "dark chocolate|buttery pastry|fresh berries|caramel and sea salt|warm spices",
          "Whisk butter, sugar and cocoa into gooey brownies.|Bake a crisp pastry shell and fill it with lemon curd.|Roll soft dough with cinnamon sugar and bake until golden.|Layer sponge with cream and summer berries."),
        G("vegetarian salad recipe", "Green|Crunchy|Rainbow|Summer|Zesty|Roasted|Fresh|Warm", "Salad|Grain Bowl|Slaw|Tabbouleh|Panzanella|Buddha Bowl|Quinoa Salad|Greens",
          "a summer picnic|a farmers market|a light lunch at the desk|a Mediterranean terrace|a garden party",
          "seasonal vegetables|grains and legumes|herbs and citrus|roasted squash|feta and olives",
          "Toss quinoa with roasted vegetables and a lemon dressing.|Mix chopped herbs, bulgur and tomatoes.|Combine crunchy cabbage, carrots and a sesame dressing.|Layer greens, chickpeas and avocado in a bowl."),
        G("soup recipe", "Hearty|Creamy|Roasted|Spiced|Rustic|Golden|Winter|Simple", "Soup|Stew|Chowder|Broth|Minestrone|Bisque|Pho|Gumbo",
          "a cold winter evening|a French bistro|a Vietnamese street corner|a New England harbour|a farmhouse kitchen",
          "root vegetables|slow-simmered stock|seafood|beans and greens|warming spices",
          "Roast squash and blend it into a velvety soup.|Simmer beef bones for hours for a clear, fragrant broth.|Stir clams and potatoes into a creamy chowder.|Cook beans, pasta and vegetables in a tomato broth."),
        G("barbecue and grilling recipe", "Smoky|Sticky|Charred|Spicy|Honey|Texas|Grilled|Slow-Smoked", "Ribs|Brisket|Burgers|Skewers|Wings|Pulled Pork|Steak|Kebabs",
          "a summer backyard|a Texas smokehouse|a beach barbecue|a camping trip|a tailgate party",
          "dry rubs|low and slow smoking|marinades|charcoal grilling|tangy sauces",
          "Rub brisket with spices and smoke it low and slow.|Grill marinated skewers over hot charcoal.|Glaze ribs with sticky honey barbecue sauce.|Smash burgers on a hot griddle for crisp edges."),
    ),
)  # fmt: skip

GADGETS = Domain("gadget", "gadget", _s("sleek|rugged|compact|premium|budget-friendly|lightweight|powerful|minimalist|smart|durable"),
    _s("commuters|travellers|home office workers|athletes|gamers|students"),
    _s("Battery life up to {n} hours.|Weighs {n} grams.|{m}-year warranty.|First released in {y}."),
    "made for", "Key features: {a} and {b}.",
    (
        G("wireless audio device", "Pulse|Echo|Sonic|Aura|Nova|Wave|Quiet|Bass", "Buds|Headphones|Earbuds|Pods|Cans|Studio|Air|Over-Ear",
          "a noisy commute|long-haul flights|the gym|a home studio|a busy open-plan office",
          "active noise cancelling|deep bass|long battery life|comfortable fit|studio-quality sound",
          "Active noise cancelling blocks out traffic and chatter.|Sweat-resistant earbuds that stay put during a run.|Plush over-ear cushions for all-day listening.|Multipoint Bluetooth switches between phone and laptop."),
        G("smartwatch and fitness tracker", "Fit|Pulse|Active|Core|Stride|Peak|Vital|Track", "Watch|Band|Tracker|Sport|Run|Health|Ring|Coach",
          "morning runs|the swimming pool|mountain hikes|the gym|everyday wear",
          "heart-rate tracking|GPS workouts|sleep tracking|step counting|health insights",
          "Tracks heart rate, sleep and steps around the clock.|Built-in GPS maps your runs and rides.|Waterproof for swimming and showering.|Gentle reminders to move and breathe."),
        G("camera", "Vista|Focus|Lumen|Pixel|Prime|Snap|Optic|Frame", "Camera|Mirrorless|Action Cam|Compact|Lens|Vlog Kit|Shooter|Zoom",
          "travel photography|street photography|mountain biking|wedding shoots|YouTube vlogging",
          "image stabilisation|4K video|low-light performance|interchangeable lenses|weather sealing",
          "A large sensor captures sharp photos even at night.|Shoots stabilised 4K video from a helmet mount.|Flip screen and clear audio for vlogging.|Weather-sealed body for shooting in the rain."),
        G("smart home device", "Home|Smart|Hub|Nest|Glow|Bright|Secure|Comfy", "Speaker|Thermostat|Doorbell|Bulb|Plug|Camera|Hub|Lock",
          "a modern apartment|a family home|a home office|a rental flat|a holiday cottage",
          "voice control|home security|energy saving|automation|lighting scenes",
          "Control lights, heating and music with your voice.|A video doorbell that shows who is at the door from anywhere.|Learns your schedule to save energy on heating.|Smart bulbs set the mood with millions of colours."),
        G("laptop accessory", "Pro|Slim|Ergo|Dock|Swift|Desk|Flex|Core", "Keyboard|Mouse|Dock|Stand|Hub|Monitor|Webcam|Charger",
          "a home office|a shared co-working space|a university library|a standing desk|a coffee shop",
          "ergonomics|productivity|fast charging|more ports|video calls",
          "A single cable connects monitors, power and drives.|Ergonomic design eases strain on the wrist.|Mechanical keys with a quiet, satisfying click.|A sharp webcam with auto-framing for video calls."),
        G("kitchen appliance", "Chef|Crisp|Brew|Blend|Quick|Smart|Steam|Fresh", "Air Fryer|Blender|Espresso Machine|Kettle|Multicooker|Toaster|Grinder|Mixer",
          "a small city kitchen|a busy family kitchen|a morning coffee routine|meal prep Sundays|a student flat",
          "crispy food without oil|barista-quality coffee|one-pot cooking|smoothies|time-saving presets",
          "Air-fries chips to a crunch with a spoon of oil.|Pulls rich espresso and steams silky milk.|Pressure-cooks stews in a fraction of the time.|Crushes ice and frozen fruit into smooth shakes."),
        G("outdoor camping gadget", "Trail|Summit|Ridge|Camp|Alpine|Wild|Trek|Base", "Lantern|Tent|Stove|Power Bank|Filter|Headlamp|Solar Panel|Radio",
          "backcountry trails|a festival campsite|a mountain summit|a canoe trip|a power cut at home",
          "solar charging|waterproofing|light weight|emergency readiness|long runtime",
          "Charges phones from the sun on multi-day hikes.|A bright headlamp with a red night mode.|Filters stream water in seconds.|Packs down small and sets up in minutes."),
        G("gaming peripheral", "Rapid|Venom|Titan|Neon|Pro|Apex|Shadow|Vortex", "Controller|Headset|Keyboard|Mouse|Mousepad|Chair|Wheel|Capture Card",
          "late-night gaming sessions|esports tournaments|a streaming setup|a couch co-op evening|a LAN party",
          "low latency|RGB lighting|precision aiming|surround sound|customisable buttons",
          "An ultra-light mouse with a precise sensor for fast aiming.|Surround sound so you hear footsteps first.|Hot-swappable switches and per-key RGB.|Remappable back buttons for competitive play."),
    ),
)  # fmt: skip

DOMAINS: tuple[Domain, ...] = (FILMS, BOOKS, PODCASTS, GAMES, RECIPES, GADGETS)


def _title(rng: random.Random, d: Domain, g: Genre) -> str:
    a, n, n2 = rng.choice(g.adj), rng.choice(g.noun), rng.choice(g.noun)
    if n2 == n:
        n2 = g.noun[(g.noun.index(n) + 1) % len(g.noun)]
    patterns = [f"The {a} {n}", f"{a} {n}"]
    if d.prefix in ("film", "book", "game"):
        patterns += [f"The {n} of the {a} {n2}", f"{n} and the {a} {n2}"]
    if d.prefix in ("film", "game"):
        patterns.append(f"{a} {n} {rng.choice(('II', 'III', 'Reborn', 'Rising', 'Returns'))}")
    if d.prefix == "recipe":
        patterns += [f"{a} {n} with {rng.choice(g.theme).split(' and ')[0]}", f"{a} {n} and {n2}"]
    if d.prefix == "podcast":
        patterns += [f"The {a} {n} Podcast", f"{n} and {n2}"]
    if d.prefix == "gadget":
        patterns += [f"{a} {n} {rng.choice(('Pro', 'Max', 'Mini', 'Lite', 'Plus'))}"]
    t = rng.choice(patterns)
    if d.prefix == "gadget":
        t += f" {rng.choice('XSMQ')}{rng.randrange(1, 10)}"
    return t


def _detail(rng: random.Random, d: Domain) -> str:
    tpl = rng.choice(d.details)
    n = {"film": rng.randrange(80, 181), "book": rng.randrange(120, 900), "podcast": rng.randrange(15, 121),
         "game": rng.randrange(4, 120), "recipe": rng.randrange(10, 241), "gadget": rng.randrange(8, 900)}[d.prefix]  # fmt: skip
    return tpl.format(n=n, m=rng.randrange(2, 9), y=rng.randrange(1965, 2025))


def _article(word: str) -> str:
    return "An" if word[0].lower() in "aeiou" else "A"


def item_text(rng: random.Random, d: Domain, g: Genre) -> str:
    """One item's text; the verbosity level (0..3) sets its length, from a bare title to a blurb."""
    title = _title(rng, d, g)
    mood, setting = rng.choice(d.moods), rng.choice(g.setting)
    plot, plot2 = rng.sample(g.plot, 2)
    t1, t2 = rng.sample(g.theme, 2)
    level = rng.choices((0, 1, 2, 3), weights=(2, 3, 3, 2))[0]
    kind = g.name
    if level == 0:
        return f"{title}. {_article(mood)} {mood} {kind}."
    parts = [f"{title}.", f"{_article(mood)} {mood} {kind} {d.where} {setting}.", plot]
    if level >= 2:
        parts.append(d.about.format(a=t1, b=t2))
    if level >= 3:
        if rng.random() < 0.5:
            parts.append(plot2)
        parts.append(_detail(rng, d))
        parts.append(f"Perfect for {rng.choice(d.audiences)}.")
    return " ".join(parts)


def generate(seed: int = DEFAULT_SEED, per_domain: int = DEFAULT_PER_DOMAIN) -> list[Item]:
    """The catalog: ``per_domain`` items per domain, genres round-robin, ids ``<domain>-NNNNN``."""
    rng = random.Random(seed)
    items: list[Item] = []
    for d in DOMAINS:
        for i in range(per_domain):
            g = d.genres[i % len(d.genres)]
            items.append(Item(f"{d.prefix}-{i:05d}", item_text(rng, d, g)))
    return items


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m explorank.export.catalog_gen", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, default=DEFAULT_CATALOG_PATH, help="output JSONL path")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--per-domain", type=int, default=DEFAULT_PER_DOMAIN)
    args = p.parse_args(argv)
    items = generate(args.seed, args.per_domain)
    write_catalog_jsonl(items, args.out)
    print(f"wrote {len(items)} items to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
