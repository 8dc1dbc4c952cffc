"""Retrieval set written for mgte's tests: 200 short English passages on distinct facts and 50
paraphrased questions, each answered by exactly one passage. Original text."""

from __future__ import annotations

PASSAGES: tuple[str, ...] = (
    (
        "Mount Everest, on the border between Nepal and China, rises about 8,849 metres above sea level, "
        "making it the highest mountain on Earth."
    ),
    (
        "The Nile flows north through northeastern Africa into the Mediterranean Sea and is usually ranked as "
        "one of the two longest rivers in the world."
    ),
    (
        "Australia is the only country that occupies an entire continent, and its capital city is Canberra "
        "rather than Sydney or Melbourne."
    ),
    (
        "Lake Baikal in Siberia is the deepest lake in the world, reaching more than 1,600 metres, and it "
        "holds roughly a fifth of Earth's unfrozen surface fresh water."
    ),
    (
        "The Sahara is the largest hot desert on Earth, stretching across much of North Africa from the "
        "Atlantic Ocean to the Red Sea."
    ),
    (
        "Vatican City, an enclave surrounded by Rome, is the smallest independent state in the world by both "
        "area and population."
    ),
    (
        "The shoreline of the Dead Sea, between Jordan and Israel, lies more than 400 metres below sea level, "
        "the lowest land elevation on Earth."
    ),
    (
        "Greenland is the largest island in the world that is not a continent, and most of its surface is "
        "covered by a thick ice sheet."
    ),
    (
        "The Amazon rainforest covers much of the Amazon basin in South America, with the largest share of "
        "the forest lying inside Brazil."
    ),
    (
        "Canada has the longest coastline of any country, stretching more than 200,000 kilometres along the "
        "Atlantic, Pacific and Arctic oceans."
    ),
    (
        "Jupiter is the largest planet in the solar system, and its Great Red Spot is a giant storm that has "
        "been observed for well over a century."
    ),
    (
        "Venus has a thick carbon dioxide atmosphere that traps heat, making it the hottest planet in the "
        "solar system even though Mercury orbits closer to the Sun."
    ),
    (
        "Light from the Sun takes about eight minutes and twenty seconds to travel the roughly 150 million "
        "kilometres to Earth."
    ),
    (
        "Saturn is famous for its bright rings, which are made mostly of chunks of water ice ranging from "
        "tiny grains to pieces as big as houses."
    ),
    (
        "Neil Armstrong became the first person to walk on the Moon in July 1969 during NASA's Apollo 11 "
        "mission, followed shortly by Buzz Aldrin."
    ),
    "Mars appears reddish because iron oxide, essentially rust, coats much of the dust and rock on its surface.",
    (
        "In 2006 the International Astronomical Union reclassified Pluto as a dwarf planet after adopting a "
        "new formal definition of a planet."
    ),
    (
        "The International Space Station orbits Earth about every 90 minutes, so its crew sees roughly "
        "sixteen sunrises each day."
    ),
    "Proxima Centauri, a small red dwarf about 4.2 light-years away, is the closest known star to the Sun.",
    (
        "A black hole is a region of space where gravity is so strong that nothing, not even light, can "
        "escape once it crosses the event horizon."
    ),
    (
        "The cheetah is the fastest land animal, able to sprint at roughly 100 to 120 kilometres per hour "
        "over short distances."
    ),
    (
        "The blue whale is the largest animal known to have ever lived, growing to about 30 metres long and "
        "weighing well over 100 tonnes."
    ),
    (
        "An octopus has three hearts and blue blood, because its blood uses a copper-based protein called "
        "hemocyanin to carry oxygen."
    ),
    (
        "Giant pandas eat mostly bamboo and may spend more than ten hours a day feeding to get enough energy "
        "from this poor food."
    ),
    (
        "Male emperor penguins incubate a single egg on their feet through the Antarctic winter, going "
        "without food for about two months."
    ),
    "Honeybees communicate the direction and distance of food sources to their hivemates by performing a waggle dance.",
    (
        "Crows are able to recognise and remember individual human faces for years, and they may scold people "
        "who once threatened them."
    ),
    "Elephants have the longest pregnancy of any land mammal, carrying a calf for about 22 months before it is born.",
    (
        "Hummingbirds are the only birds capable of sustained backward flight, and their wings can beat "
        "dozens of times per second."
    ),
    "The axolotl, a salamander from Mexico, can regrow lost limbs and even repair parts of its heart and spinal cord.",
    (
        "An adult human skeleton usually has 206 bones, while a newborn baby has nearly 300, many of which "
        "fuse together during growth."
    ),
    "The femur, or thigh bone, is the longest and strongest bone in the human body.",
    (
        "Red blood cells carry oxygen using haemoglobin and circulate for about 120 days before being removed "
        "by the spleen and liver."
    ),
    (
        "Vitamin D is produced in the skin when it is exposed to sunlight, and it helps the body absorb "
        "calcium for healthy bones."
    ),
    (
        "A healthy adult heart at rest typically beats between 60 and 100 times per minute, and trained "
        "athletes often have lower rates."
    ),
    (
        "Scurvy is caused by a lack of vitamin C, and sailors once prevented it by carrying citrus fruit such "
        "as lemons and limes on voyages."
    ),
    (
        "The liver is the largest internal organ and can regenerate, regrowing to full size even after a "
        "large portion has been removed."
    ),
    (
        "Adults are generally advised to get seven to nine hours of sleep per night to support memory, mood "
        "and immune function."
    ),
    (
        "Alexander Fleming discovered penicillin in 1928 after noticing that a mould had killed bacteria "
        "growing in a laboratory dish."
    ),
    (
        "Normal human body temperature is roughly 37 degrees Celsius, or about 98.6 degrees Fahrenheit, "
        "though it varies slightly during the day."
    ),
    (
        "Water boils at 100 degrees Celsius at sea level, but at high altitude the lower air pressure makes "
        "it boil at a lower temperature."
    ),
    "Gold has the chemical symbol Au, from the Latin word aurum, and it does not rust or tarnish in ordinary air.",
    (
        "Light travels through a vacuum at about 299,792 kilometres per second, which is the fastest speed "
        "possible in the universe."
    ),
    (
        "Helium is lighter than air, which is why balloons filled with it float, and it is the second most "
        "abundant element in the universe."
    ),
    (
        "Diamond and graphite are both made entirely of carbon, but their atoms are arranged differently, "
        "making diamond extremely hard and graphite soft."
    ),
    (
        "Sound cannot travel through the vacuum of space because it needs a medium such as air, water or "
        "solid material to carry its vibrations."
    ),
    (
        "Mercury is the only metal that is liquid at room temperature, which is why it was once widely used "
        "in thermometers."
    ),
    (
        "Newton's first law of motion states that an object stays at rest or keeps moving in a straight line "
        "at constant speed unless a force acts on it."
    ),
    (
        "Table salt is the chemical compound sodium chloride, formed from a highly reactive metal and a "
        "poisonous green gas."
    ),
    (
        "Ice floats on liquid water because water expands when it freezes, making the solid form less dense "
        "than the liquid."
    ),
    (
        "The Berlin Wall, which divided East and West Berlin for almost three decades, was opened in November "
        "1989 and later torn down."
    ),
    (
        "The Great Pyramid of Giza was built for the pharaoh Khufu around 4,500 years ago and was the tallest "
        "human-made structure for over 3,000 years."
    ),
    (
        "The Magna Carta, sealed by King John of England in 1215, limited royal power and is seen as an early "
        "foundation of the rule of law."
    ),
    (
        "The Titanic sank in the North Atlantic in April 1912 after striking an iceberg on its maiden voyage "
        "from Southampton to New York."
    ),
    (
        "Johannes Gutenberg developed a printing press with movable metal type in Mainz around 1450, greatly "
        "speeding up the production of books."
    ),
    "The First World War began in 1914 and ended with an armistice that took effect on 11 November 1918.",
    (
        "Christopher Columbus first reached islands in the Caribbean in 1492 while sailing west under the "
        "sponsorship of the Spanish crown."
    ),
    (
        "The Western Roman Empire is traditionally said to have ended in 476 AD, when its last emperor, "
        "Romulus Augustulus, was deposed."
    ),
    (
        "The French Revolution began in 1789, and the storming of the Bastille prison in Paris on 14 July is "
        "still celebrated as a national holiday."
    ),
    (
        "Nelson Mandela was released in 1990 after 27 years in prison and became South Africa's first Black "
        "president in 1994."
    ),
    (
        "Bread dough rises because yeast feeds on sugars and releases carbon dioxide gas, which gets trapped "
        "in the stretchy gluten network."
    ),
    (
        "Guacamole is a Mexican dip made chiefly from mashed avocado, usually seasoned with lime juice, salt, "
        "onion and chilli."
    ),
    (
        "Pasta should be cooked in plenty of salted water, and the Italian phrase al dente means it is still "
        "slightly firm when bitten."
    ),
    (
        "Saffron, made from the dried stigmas of a crocus flower, is one of the most expensive spices in the "
        "world by weight."
    ),
    "Sushi rice is seasoned with a mixture of rice vinegar, sugar and salt while it is still warm from the cooker.",
    (
        "The Maillard reaction between amino acids and sugars creates the brown crust and savoury flavour on "
        "seared meat and toasted bread."
    ),
    (
        "Honey can keep for thousands of years without spoiling because its low water content and acidity "
        "stop bacteria from growing."
    ),
    "Tofu is made by curdling soy milk and pressing the resulting curds into solid white blocks.",
    (
        "Kimchi is a traditional Korean side dish of salted and fermented vegetables, most often napa cabbage "
        "with chilli and garlic."
    ),
    (
        "Espresso is made by forcing hot water under high pressure through finely ground coffee beans, "
        "producing a small, concentrated shot."
    ),
    (
        "A marathon race covers 42.195 kilometres, a distance first run at the 1908 London Olympics and later "
        "made the official standard."
    ),
    (
        "A standard football match lasts 90 minutes, split into two halves of 45 minutes, plus any stoppage "
        "time added by the referee."
    ),
    "In tennis, a score of zero is called love, and a tied score of 40-40 in a game is called deuce.",
    (
        "Basketball was invented in 1891 by James Naismith, a Canadian teacher in Massachusetts, who used "
        "peach baskets as the first goals."
    ),
    "The modern Olympic Games were first held in Athens in 1896, reviving an ancient tradition from Olympia in Greece.",
    "A cricket team has eleven players, and a bowler delivers six legal balls in each over.",
    (
        "In golf, a score of one stroke under par on a hole is called a birdie, and two strokes under par is "
        "called an eagle."
    ),
    "The Tour de France is a multi-stage cycling race held mostly in France each summer, lasting about three weeks.",
    "An Olympic swimming pool is 50 metres long and is normally divided into eight or ten lanes.",
    (
        "An ice hockey team has six players on the ice at once, including the goaltender, and plays with a "
        "hard rubber puck."
    ),
    "A standard piano has 88 keys, made up of 52 white keys and 36 black keys.",
    "Ludwig van Beethoven composed his famous Ninth Symphony after he had become almost completely deaf.",
    "A standard guitar has six strings, usually tuned from lowest to highest as E, A, D, G, B and E.",
    (
        "The violin is the smallest and highest-pitched member of the string family, which also includes the "
        "viola, cello and double bass."
    ),
    "Wolfgang Amadeus Mozart was a child prodigy from Salzburg who began composing music at about the age of five.",
    "In music notation, a whole note lasts four beats in common time, while a half note lasts two beats.",
    (
        "The Beatles were a rock band from Liverpool whose members were John Lennon, Paul McCartney, George "
        "Harrison and Ringo Starr."
    ),
    "Jazz developed in New Orleans in the early twentieth century, blending blues, ragtime and brass band traditions.",
    (
        "The note A above middle C is commonly tuned to 440 hertz, which serves as a standard reference pitch "
        "for orchestras."
    ),
    (
        "A bagpipe produces sound from reeds fed by air stored in a bag, and the instrument is strongly "
        "associated with Scotland."
    ),
    "A byte consists of eight bits, and each bit stores a single binary value of either zero or one.",
    "The World Wide Web was invented by Tim Berners-Lee in 1989 while he was working at CERN near Geneva.",
    (
        "Python is a programming language created by Guido van Rossum and first released in 1991, named after "
        "a British comedy group."
    ),
    "Wi-Fi networks commonly transmit data using radio waves in the 2.4 gigahertz and 5 gigahertz frequency bands.",
    (
        "GPS receivers work out their position on Earth by precisely timing radio signals sent from several "
        "satellites in orbit."
    ),
    (
        "A solid-state drive stores data on flash memory chips with no moving parts, making it faster than a "
        "spinning hard disk."
    ),
    "The first iPhone was unveiled by Steve Jobs in January 2007 and went on sale in the United States that June.",
    (
        "Moore's law is the observation that the number of transistors on a computer chip roughly doubles "
        "about every two years."
    ),
    "A QR code is a square two-dimensional barcode that a phone camera can scan to open a link or read stored text.",
    (
        "Strong passwords are long and unique, and two-factor authentication adds a second check such as a "
        "code sent to your phone."
    ),
    (
        "Lightning heats the surrounding air to around 30,000 degrees Celsius, and the sudden expansion of "
        "that air produces thunder."
    ),
    (
        "A rainbow appears when sunlight is refracted and reflected inside raindrops, so you see it with the "
        "Sun behind you."
    ),
    (
        "Hurricanes, typhoons and cyclones are the same kind of tropical storm, named differently depending "
        "on the ocean where they form."
    ),
    (
        "Fog is essentially a cloud at ground level, forming when air near the surface cools enough for water "
        "vapour to condense."
    ),
    "Snowflakes usually form six-sided crystals because of the way water molecules bond together as they freeze.",
    "The Beaufort scale rates wind strength from 0 for calm air to 12 for hurricane-force winds.",
    (
        "The highest air temperature ever officially recorded on Earth is about 56.7 degrees Celsius, "
        "measured in Death Valley, California, in 1913."
    ),
    (
        "Hail forms when strong updrafts in thunderstorms carry raindrops high into freezing air, where "
        "layers of ice build up on them."
    ),
    (
        "El Nino is a periodic warming of surface waters in the central and eastern tropical Pacific that "
        "shifts weather patterns around the world."
    ),
    "A barometer measures air pressure, and a falling reading often signals that stormy or wet weather is on the way.",
    (
        "The Wright brothers made the first powered, controlled aeroplane flight at Kitty Hawk, North "
        "Carolina, in December 1903."
    ),
    "Japan's Shinkansen high-speed railway opened in 1964 between Tokyo and Osaka, just before the Tokyo Olympics.",
    (
        "The Panama Canal links the Atlantic and Pacific oceans, letting ships avoid the long voyage around "
        "the southern tip of South America."
    ),
    "The London Underground, opened in 1863, is the oldest underground railway system in the world.",
    (
        "Henry Ford's moving assembly line, introduced in 1913, cut the time needed to build a Model T car "
        "from about twelve hours to about ninety minutes."
    ),
    (
        "Concorde was a supersonic passenger jet that flew from London and Paris to New York in about three "
        "and a half hours until it was retired in 2003."
    ),
    (
        "Electric cars are powered by rechargeable battery packs, and regenerative braking lets them recover "
        "energy when slowing down."
    ),
    (
        "The Channel Tunnel, opened in 1994, carries trains beneath the sea between Folkestone in England and "
        "Coquelles near Calais in France."
    ),
    (
        "Container ships carry goods in standard steel boxes, and their capacity is commonly measured in "
        "twenty-foot equivalent units, or TEU."
    ),
    (
        "Most countries drive on the right-hand side of the road, but the United Kingdom, Japan, Australia "
        "and India drive on the left."
    ),
    (
        "Plants make their own food through photosynthesis, using sunlight to turn carbon dioxide and water "
        "into sugar while releasing oxygen."
    ),
    (
        "Coast redwoods in California are the tallest trees on Earth, with the record specimen measuring more "
        "than 115 metres."
    ),
    (
        "Young sunflowers in the bud stage turn to follow the Sun across the sky during the day, a behaviour "
        "called heliotropism."
    ),
    (
        "Cacti store water in thick, fleshy stems, and their spines are modified leaves that reduce water "
        "loss and deter animals."
    ),
    "The Venus flytrap is a carnivorous plant native to the Carolinas that snaps its leaves shut to trap insects.",
    (
        "Bamboo is among the fastest-growing plants in the world, with some species growing close to a metre "
        "in a single day."
    ),
    (
        "Tomatoes are botanically a fruit because they develop from a flower and contain seeds, though cooks "
        "usually treat them as vegetables."
    ),
    (
        "Deciduous trees shed their leaves in autumn, and yellow and orange colours show as the green "
        "chlorophyll in the leaves breaks down."
    ),
    "Vanilla flavouring comes from the cured seed pods of a climbing orchid originally native to Mexico.",
    "Poison ivy causes an itchy skin rash because its sap contains an oily compound called urushiol.",
    (
        "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century, and it now hangs in the "
        "Louvre museum in Paris."
    ),
    (
        "William Shakespeare wrote nearly forty plays, including Hamlet, Macbeth and Romeo and Juliet, in "
        "Elizabethan and Jacobean England."
    ),
    (
        "Vincent van Gogh painted The Starry Night in 1889 while staying at an asylum in Saint-Remy-de- "
        "Provence in southern France."
    ),
    "Michelangelo painted the ceiling of the Sistine Chapel in the Vatican between 1508 and 1512.",
    (
        "George Orwell's novel Nineteen Eighty-Four describes a society ruled by Big Brother, where the "
        "government watches citizens constantly."
    ),
    "Homer is the ancient Greek poet traditionally credited with the epic poems the Iliad and the Odyssey.",
    (
        "Pablo Picasso co-founded Cubism, a style of art that breaks objects into geometric shapes shown from "
        "several viewpoints at once."
    ),
    (
        "Jane Austen's novel Pride and Prejudice, published in 1813, follows Elizabeth Bennet and her "
        "changing opinion of Mr Darcy."
    ),
    "A haiku is a short Japanese poem of three lines, traditionally with five, seven and five syllables.",
    (
        "Don Quixote by Miguel de Cervantes, published in two parts in 1605 and 1615, is often called the "
        "first modern novel."
    ),
    (
        "Mandarin Chinese has more native speakers than any other language, with close to a billion people "
        "speaking it as a first language."
    ),
    "The English alphabet has 26 letters, of which five are usually counted as vowels: A, E, I, O and U.",
    (
        "Esperanto is a constructed language created by L. L. Zamenhof in 1887 to serve as an easy "
        "international second language."
    ),
    "Braille is a tactile writing system for blind readers, using patterns of raised dots arranged in cells of six.",
    (
        "The Hawaiian alphabet is one of the shortest in the world, with only thirteen letters including the "
        "glottal stop called the okina."
    ),
    (
        "The Rosetta Stone carries the same decree in hieroglyphic, Demotic and ancient Greek scripts, which "
        "helped scholars decipher Egyptian hieroglyphs."
    ),
    (
        "Spanish is the official language of most countries in Central and South America, while the official "
        "language of Brazil is Portuguese."
    ),
    (
        "Morse code represents letters with dots and dashes, and the distress signal SOS is sent as three "
        "dots, three dashes and three dots."
    ),
    "Arabic is written from right to left, and most of its letters change shape depending on their position in a word.",
    (
        "Sign languages are full natural languages with their own grammar, and American Sign Language and "
        "British Sign Language are not mutually intelligible."
    ),
    (
        "The Mariana Trench in the western Pacific contains the deepest known point in the ocean, the "
        "Challenger Deep, nearly 11,000 metres down."
    ),
    (
        "The Great Barrier Reef off Queensland, Australia, is the largest coral reef system in the world, "
        "stretching for more than 2,300 kilometres."
    ),
    "Ocean tides are caused mainly by the gravitational pull of the Moon, with a smaller contribution from the Sun.",
    (
        "Seawater is salty mainly because rivers carry dissolved minerals from rocks into the sea, where they "
        "accumulate as water evaporates."
    ),
    (
        "The Pacific is the largest and deepest ocean, covering more of the planet's surface than all of "
        "Earth's land combined."
    ),
    (
        "Female sea turtles return to the beach where they hatched to lay their own eggs, often navigating "
        "using Earth's magnetic field."
    ),
    "Coral bleaching happens when water becomes too warm and corals expel the colourful algae living in their tissues.",
    (
        "The Gulf Stream is a warm ocean current that flows from the Gulf of Mexico across the Atlantic, "
        "helping to keep western Europe relatively mild."
    ),
    (
        "Sharks have no bones; their skeletons are made of cartilage, the same flexible tissue found in human "
        "ears and noses."
    ),
    (
        "Tsunamis are usually triggered by undersea earthquakes and can cross entire oceans at speeds similar "
        "to a jet aircraft."
    ),
    (
        "Pi, the ratio of a circle's circumference to its diameter, is approximately 3.14159, and its decimal "
        "digits never end or repeat."
    ),
    "A prime number has exactly two divisors, one and itself, which makes two the only even prime number.",
    (
        "The Pythagorean theorem states that in a right triangle the square of the hypotenuse equals the sum "
        "of the squares of the other two sides."
    ),
    "The three interior angles of any triangle drawn on a flat plane always add up to exactly 180 degrees.",
    "The Fibonacci sequence begins 0, 1, 1, 2, 3, 5, 8, with each term being the sum of the two terms before it.",
    (
        "Zero as a number with its own symbol was developed by mathematicians in India, including Brahmagupta "
        "in the seventh century."
    ),
    "A googol is the number one followed by a hundred zeros, and the name of the company Google was inspired by it.",
    "A hexagon has six sides, and bees build honeycomb cells in this shape because it uses space and wax efficiently.",
    "Roman numerals use letters for values, such as X for ten, L for fifty, C for one hundred and M for one thousand.",
    "The probability of rolling a six on a fair six-sided die is one in six, or about 16.7 percent.",
    (
        "Thomas Edison's laboratory developed a long-lasting carbon filament light bulb in 1879, making "
        "electric lighting practical for homes."
    ),
    (
        "Alexander Graham Bell received a patent for the telephone in March 1876 and soon afterwards spoke "
        "the first words over it to his assistant, Thomas Watson."
    ),
    (
        "The microwave oven was invented after engineer Percy Spencer noticed that radar equipment had melted "
        "a chocolate bar in his pocket."
    ),
    (
        "Velcro was invented by Swiss engineer George de Mestral after he examined the burrs that stuck to "
        "his dog's fur during a walk."
    ),
    (
        "Thomas Newcomen built the first practical steam engine for pumping water out of mines in 1712, and "
        "James Watt later greatly improved its efficiency."
    ),
    (
        "The ballpoint pen was patented by Laszlo Biro, a Hungarian journalist, in 1938, and in many "
        "countries pens are still called biros."
    ),
    "Post-it Notes grew out of a weak, reusable adhesive discovered at the company 3M by the chemist Spencer Silver.",
    (
        "Guglielmo Marconi pioneered long-distance radio communication and sent the first transatlantic radio "
        "signal in 1901."
    ),
    (
        "Paper was invented in China, and the court official Cai Lun is traditionally credited with improving "
        "its production around 105 AD."
    ),
    (
        "The QWERTY keyboard layout comes from typewriters designed by Christopher Latham Sholes in the "
        "United States in the 1870s."
    ),
    (
        "The Eiffel Tower in Paris was completed in 1889 for a world's fair and stands about 330 metres tall "
        "including its antennas."
    ),
    (
        "The Great Wall of China is a series of fortifications built over many centuries, with the best- "
        "preserved sections dating from the Ming dynasty."
    ),
    "The Burj Khalifa in Dubai, completed in 2010, is the tallest building in the world at about 828 metres.",
    (
        "The Taj Mahal in Agra, India, is a white marble mausoleum built by the Mughal emperor Shah Jahan in "
        "memory of his wife Mumtaz Mahal."
    ),
    (
        "The Colosseum in Rome was an ancient amphitheatre that could hold tens of thousands of spectators "
        "for gladiator fights and public shows."
    ),
    (
        "The Statue of Liberty was a gift from the people of France to the United States and was dedicated in "
        "New York Harbor in 1886."
    ),
    "Machu Picchu is a fifteenth-century Inca citadel set high on a mountain ridge in the Andes of Peru.",
    (
        "The Sydney Opera House, designed by the Danish architect Jorn Utzon, is known for its roof of white "
        "sail-like shells."
    ),
    (
        "The Leaning Tower of Pisa began to tilt during construction in the twelfth century because its "
        "foundation was laid on soft ground."
    ),
    (
        "Stonehenge is a prehistoric ring of standing stones in Wiltshire, England, built in stages roughly "
        "5,000 to 4,000 years ago."
    ),
    (
        "Earth's crust is broken into tectonic plates that drift a few centimetres a year, roughly as fast as "
        "fingernails grow."
    ),
    (
        "The Ring of Fire is a horseshoe-shaped zone around the Pacific Ocean where most of the world's "
        "earthquakes and volcanic eruptions occur."
    ),
    (
        "Earthquake magnitude scales are logarithmic, so each increase of one whole number means about 32 "
        "times more energy is released."
    ),
    (
        "Igneous rock forms from cooled magma, sedimentary rock from compressed layers of sediment, and "
        "metamorphic rock from existing rock changed by heat and pressure."
    ),
    (
        "Earth's inner core is a solid ball of iron and nickel, while the liquid metal of the outer core "
        "generates the planet's magnetic field."
    ),
    (
        "Geysers such as Old Faithful in Yellowstone erupt when underground water is heated by magma until it "
        "bursts to the surface as steam and hot water."
    ),
    (
        "Stalactites hang from cave ceilings while stalagmites rise from the floor, both built slowly by "
        "dripping water leaving behind minerals."
    ),
    (
        "Earth is about 4.5 billion years old, an age estimated from the radioactive dating of meteorites and "
        "ancient rocks."
    ),
    (
        "The Grand Canyon in Arizona was carved by the Colorado River over millions of years and is more than "
        "1.6 kilometres deep in places."
    ),
    (
        "Glaciers are slow-moving masses of ice formed from snow compressed over many years, and they carve "
        "U-shaped valleys as they move."
    ),
)

QUERIES: tuple[tuple[str, int], ...] = (
    ("Where is the lowest point of dry land on the planet?", 6),
    ("Which lake in Russia goes deeper than any other?", 3),
    ("Which nation has the most kilometres of shoreline?", 9),
    ("Why is Venus hotter than Mercury even though it is farther from the Sun?", 11),
    ("What gives the red planet its rusty colour?", 15),
    ("Which star is nearest to our own Sun?", 18),
    ("How many hearts does an octopus have?", 22),
    ("How do bees tell each other where to find flowers?", 25),
    ("Which land mammal stays pregnant for the longest time?", 27),
    ("How long does a red blood cell survive in the body?", 32),
    ("Which vitamin deficiency made sailors sick on long sea journeys?", 35),
    ("Who discovered penicillin, and what did he notice in his lab?", 38),
    ("Why is the chemical symbol for gold Au?", 41),
    ("Which metal stays liquid at normal room temperature?", 46),
    ("Why does frozen water float instead of sinking?", 49),
    ("What document did King John agree to in 1215?", 52),
    ("Who invented the printing press with movable type?", 54),
    ("How long was Nelson Mandela imprisoned before being freed?", 59),
    ("What makes bread dough puff up before baking?", 60),
    ("Which costly spice comes from parts of a crocus flower?", 63),
    ("How is bean curd produced from soybeans?", 67),
    ("How long is a marathon in kilometres?", 70),
    ("Who came up with the game of basketball?", 73),
    ("What do golfers call finishing a hole one shot below par?", 76),
    ("How many keys are on a normal piano?", 80),
    ("At what age did Mozart start writing music?", 84),
    ("What frequency is concert A usually tuned to?", 88),
    ("Who created the World Wide Web and where did he work?", 91),
    ("Why are SSDs quicker than traditional hard drives?", 95),
    ("What does Moore's law predict about chips?", 97),
    ("What causes the rumbling sound of thunder during a storm?", 100),
    ("What is the hottest temperature ever measured on Earth?", 106),
    ("Which waterway lets ships pass between the Atlantic and the Pacific?", 112),
    ("Which rail tunnel runs under the sea between England and France?", 117),
    ("What kind of tree grows taller than any other?", 121),
    ("Which plant catches insects by closing its leaves?", 124),
    ("Where was Van Gogh living when he painted The Starry Night?", 132),
    ("How many syllables are in each line of a haiku?", 138),
    ("How do blind people read using raised dots?", 143),
    ("How is SOS signalled in Morse code?", 147),
    ("What causes the sea level to rise and fall each day?", 152),
    ("Why do corals turn white when the sea heats up?", 156),
    ("How do you work out the longest side of a right-angled triangle?", 162),
    ("What is a googol and how many zeros does it have?", 166),
    ("How was the microwave oven discovered by accident?", 172),
    ("Who was the inventor of the ballpoint pen?", 175),
    ("Which Mughal ruler built the Taj Mahal and why?", 183),
    ("Where is the ancient Inca city of Machu Picchu located?", 186),
    ("How much more energy does each step on the earthquake magnitude scale mean?", 192),
    ("What makes Old Faithful shoot hot water into the air?", 195),
)
